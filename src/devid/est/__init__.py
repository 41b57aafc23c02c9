"""EST (RFC 7030): the server endpoints and the client devices use."""
