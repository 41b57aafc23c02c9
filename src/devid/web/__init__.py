"""The aiohttp application: EST (and session tokens) over TLS with optional client certificates."""
