"""The client of `devid bench tpm`'s handshake figure, run as its own process so that OpenSSL starts
with the provider configuration its environment names (as `devid agent` does).

    python -m devid.bench.handshakes PORT SERVER_CERT CHAIN KEY N

Prints {"rate": handshakes/s} after N full handshakes, each on a fresh connection (no resumption).
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time


def main(argv: list[str]) -> None:
    port, server_cert, chain, key, n = int(argv[0]), argv[1], argv[2], argv[3], int(argv[4])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(server_cert)
    ctx.load_cert_chain(chain, key)
    start = time.perf_counter()
    for _ in range(n):
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            # TLS 1.3: the server's verdict on the client certificate arrives after the client's
            # Finished; read until it closes so a refused certificate fails here.
            tls.recv(1)
    print(json.dumps({"rate": n / (time.perf_counter() - start)}))


if __name__ == "__main__":
    main(sys.argv[1:])
