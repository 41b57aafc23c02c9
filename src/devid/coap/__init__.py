"""EST over secure CoAP (RFC 9148): DTLS 1.2 sessions, CoAP messages and block-wise transfer,
the EST-coaps resources over the enrollment service, and the client the device agent uses."""
