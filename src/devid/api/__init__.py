"""The admin API under /api/v1: JSON over the same HTTPS server as EST, for operators and tools.

`routes` declares every endpoint once (method, path, permission, schemas); the aiohttp dispatcher
(`app`) and the OpenAPI document (`openapi`) are both derived from that one table, so the document
cannot describe an API the server does not implement. Callers authenticate with bearer tokens
(`tokens`), are authorized by role (`roles`), rate-limited per token (`ratelimit`) and audited.
"""
