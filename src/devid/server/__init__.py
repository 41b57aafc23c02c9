"""Where devid's HTTP server is assembled and run: the aiohttp application (EST, tokens, admin
API), TLS contexts and trust, and the process runtime."""
