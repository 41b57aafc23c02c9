"""`devid serve` and `devid device` as an operator runs them: the installed script as a subprocess,
curl and openssl as peers, SIGTERM with a request in flight."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from e2e import DEVID, devid, devid_env, devid_many, ok
from est_helpers import Device, csr_b64, pem, provision, run

from devid.authority.setup import init_home, open_authority
from devid.config import Home
from devid.store import repo
from devid.store.engine import reading

PASSPHRASE = b"correct horse battery staple"


@dataclass
class Served:
    proc: subprocess.Popen[str]
    url: str
    port: int
    fingerprint: str
    source: str
    lines: list[str]
    output: queue.Queue[str]

    def est(self, op: str, label: str = "", host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}/.well-known/est{'/' + label if label else ''}/{op}"

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def _reader(stream: object, out: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line)
    out.put("")


def start_serve(home: Path, *args: str | Path, session: bool = False) -> Served:
    """`devid serve --port 0 ...`; waits for the two start lines (URL, certificate fingerprint).
    `session`: in a process group of its own, which a test may kill whole (`os.killpg`)."""
    proc = subprocess.Popen(
        [*DEVID, "serve", "--home", str(home), "--port", "0", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=devid_env(),
        start_new_session=session,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    got: list[str] = []
    deadline = time.monotonic() + 60
    while len(got) < 2:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            # The whole group when it has one: its workers must not outlive a failed start.
            os.killpg(proc.pid, signal.SIGKILL) if session else proc.kill()
            pytest.fail(f"devid serve did not start: {got} {proc.stderr.read() if proc.stderr else ''}")
        if line == "":
            pytest.fail(
                f"devid serve exited {proc.wait()}: {got} {proc.stderr.read() if proc.stderr else ''}"
            )
        got.append(line.strip())
    url = got[0].split(" at ", 1)[1]
    port = int(urllib.parse.urlsplit(url).port or 0)
    words = got[1].split()
    return Served(proc, url, port, words[-1], got[1].split("(", 1)[1].split(",", 1)[0], got, lines)


def rest_of_output(served: Served) -> str:
    q = served.output
    out = []
    while True:
        try:
            line = q.get(timeout=10)
        except queue.Empty:
            break
        if line == "":
            break
        out.append(line)
    return "".join(out)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE)


@pytest.fixture
def root_pem(home: Home, tmp_path: Path) -> Path:
    auth = open_authority(home, PASSPHRASE)
    try:
        (tmp_path / "root.pem").write_bytes(pem(auth.root))
        (tmp_path / "operational.pem").write_bytes(pem(auth.cas["operational"].certificate))
    finally:
        auth.engine.dispose()
    return tmp_path / "root.pem"


@pytest.fixture
def served(home: Home, root_pem: Path) -> Iterator[Served]:
    srv = start_serve(home.path)
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


def make_device(home: Home, tmp_path: Path, serial: str) -> Device:
    auth = open_authority(home, PASSPHRASE)
    try:
        return provision(auth, serial, tmp_path / "devices")
    finally:
        auth.engine.dispose()


def test_serve_answers_cacerts_with_a_certificate_for_localhost(
    served: Served, home: Home, root_pem: Path, tmp_path: Path
) -> None:
    assert served.source == "issued"
    for host in ("localhost", "127.0.0.1"):
        # curl checks the server's name and chain against devid's root only.
        body = run(["curl", "-sS", "--fail", "--cacert", root_pem, served.est("cacerts", host=host)]).stdout
        der = run(["openssl", "base64", "-d"], input=body).stdout
        printed = run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"], input=der).stdout.decode()
        assert "CN = Acme Operational CA" in printed and "CN = Acme Root CA" in printed

    leaf_pem = ssl.get_server_certificate(("127.0.0.1", served.port))
    (tmp_path / "server.pem").write_text(leaf_pem)
    leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
    assert leaf.fingerprint(hashes.SHA256()).hex() == served.fingerprint
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    out = run(
        [
            "openssl",
            "verify",
            "-CAfile",
            root_pem,
            "-untrusted",
            tmp_path / "operational.pem",
            tmp_path / "server.pem",
        ]
    ).stdout.decode()
    assert out.strip().endswith(": OK")
    assert served.stop() == 0

    # A restart reuses the certificate (it has far more than a third of its life left).
    again = start_serve(home.path)
    try:
        assert (again.source, again.fingerprint) == ("reused", served.fingerprint)
    finally:
        assert again.stop() == 0


def test_sigterm_lets_the_request_in_flight_finish(
    served: Served, home: Home, root_pem: Path, tmp_path: Path
) -> None:
    _request_in_flight_finishes(served, home, root_pem, tmp_path)


def test_sigterm_lets_the_request_in_flight_finish_with_workers(
    home: Home, root_pem: Path, tmp_path: Path
) -> None:
    served = start_serve(home.path, "--workers", "2")
    try:
        _request_in_flight_finishes(served, home, root_pem, tmp_path)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()


def _request_in_flight_finishes(served: Served, home: Home, root_pem: Path, tmp_path: Path) -> None:
    dev = make_device(home, tmp_path, "SN-INFLIGHT")
    key = ec.generate_private_key(ec.SECP256R1())
    body = csr_b64(key)
    ctx = ssl.create_default_context(cafile=str(root_pem))
    ctx.load_cert_chain(*map(str, dev.idevid_files))
    with (
        socket.create_connection(("127.0.0.1", served.port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        head = (
            f"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/pkcs10\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        tls.sendall(head + body[:100])  # the handler is now reading the body
        time.sleep(0.5)
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert served.proc.poll() is None, "the server quit with a request in flight"
        # A new connection is no longer accepted...
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", served.port), timeout=5).close()
        # ...but the request in flight completes.
        tls.sendall(body[100:])
        response = b""
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            response += chunk
            if b"\r\n\r\n" in response:
                header, _, rest = response.partition(b"\r\n\r\n")
                length = int(
                    next(h for h in header.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(
                        b":"
                    )[1]
                )
                if len(rest) >= length:
                    break
    header, _, payload = response.partition(b"\r\n\r\n")
    assert header.startswith(b"HTTP/1.1 200"), response[:300]
    cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(payload.split())))[0]
    assert cert.public_key() == key.public_key()
    assert served.proc.wait(timeout=30) == 0
    assert "stopped" in rest_of_output(served)


def test_operator_tls_certificate_overrides(home: Home, root_pem: Path, tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "own.pem", tmp_path / "own.key"
    run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-days", "2",
            "-keyout", key_file, "-out", cert_file,
        ]
    )  # fmt: skip
    srv = start_serve(home.path, "--tls-cert", cert_file, "--tls-key", key_file)
    try:
        assert srv.source == "given"
        own = x509.load_pem_x509_certificate(cert_file.read_bytes())
        assert srv.fingerprint == own.fingerprint(hashes.SHA256()).hex()
        run(["curl", "-sS", "--fail", "--cacert", cert_file, srv.est("cacerts", host="localhost")])
    finally:
        assert srv.stop() == 0
    assert not (home.path / "tls").exists()


def test_serve_refuses_half_a_tls_override(home: Home, tmp_path: Path) -> None:
    result = devid("serve", "--home", home.path, "--tls-cert", tmp_path / "x.pem")
    assert result.returncode == 2
    assert "--tls-cert and --tls-key go together" in result.stderr


def test_device_commands_and_basic_enrollment_against_devid_serve(
    home: Home, root_pem: Path, tmp_path: Path
) -> None:
    dev = make_device(home, tmp_path, "SN-CLI-1")
    make_device(home, tmp_path, "SN-CLI-2")
    result = ok(devid("device", "enroll-secret", dev.serial, "--home", home.path))
    secret = result.stdout.strip().splitlines()[-1]
    assert len(secret) >= 32 and " " not in secret

    srv = start_serve(home.path, "--trusted-proxy", "127.0.0.2")
    try:
        (tmp_path / "csr.b64").write_bytes(csr_b64(ec.generate_private_key(ec.SECP256R1())))
        args = [
            "curl", "-sS", "-u", f"{dev.serial}:{secret}", "--cacert", root_pem,
            "--data-binary", f"@{tmp_path / 'csr.b64'}", "-H", "Content-Type: application/pkcs10",
            "-w", "\n%{http_code}", srv.est("simpleenroll"),
        ]  # fmt: skip
        body, status = run(args).stdout.rsplit(b"\n", 1)
        assert status == b"200", body
        body, status = run(args).stdout.rsplit(b"\n", 1)
        assert (status, b"already used" in body) == (b"403", True)

        # Disabled: refused over EST; enabled again: enrolls (through the trusted proxy's header).
        ok(devid("device", "disable", "SN-CLI-2", "--reason", "stolen", "--home", home.path))
        listed = [
            json.loads(line)
            for line in ok(
                devid("device", "list", "--state", "INACTIVE", "--json", "--home", home.path)
            ).stdout.splitlines()
        ]
        assert [d["serial"] for d in listed] == ["SN-CLI-2"]
        idevid2 = (tmp_path / "devices" / "SN-CLI-2" / "idevid.pem").read_text()
        header = f"X-SSL-Client-Cert: {urllib.parse.quote(idevid2, safe='')}"
        # A key of its own: the first device's is certified for it and refused to any other.
        (tmp_path / "csr2.b64").write_bytes(csr_b64(ec.generate_private_key(ec.SECP256R1())))
        proxied = [
            "curl", "-sS", "--interface", "127.0.0.2", "--cacert", root_pem, "-H", header,
            "--data-binary", f"@{tmp_path / 'csr2.b64'}", "-H", "Content-Type: application/pkcs10",
            "-w", "\n%{http_code}", srv.est("simpleenroll"),
        ]  # fmt: skip
        body, status = run(proxied).stdout.rsplit(b"\n", 1)
        assert (status, b"INACTIVE" in body) == (b"403", True)
        ok(devid("device", "enable", "SN-CLI-2", "--home", home.path))
        body, status = run(proxied).stdout.rsplit(b"\n", 1)
        assert status == b"200", body
    finally:
        assert srv.stop() == 0

    show, listed_all, table, missing = devid_many(
        [
            ("device", "show", dev.serial, "--json", "--home", str(home.path)),
            ("device", "list", "--json", "--home", str(home.path)),
            ("device", "list", "--home", str(home.path)),
            ("device", "show", "SN-NONE", "--home", str(home.path)),
        ]
    )
    shown = json.loads(ok(show).stdout)
    assert shown["state"] == "ACTIVE"
    assert sorted(c["profile"] for c in shown["certificates"]) == ["idevid", "ldevid"]
    assert [json.loads(line)["serial"] for line in ok(listed_all).stdout.splitlines()] == [
        "SN-CLI-1",
        "SN-CLI-2",
    ]
    assert "SN-CLI-1" in ok(table).stdout
    assert missing.returncode == 2 and "no device with serial" in missing.stderr


def _enroll_over_tls(port: int, root_pem: Path, dev: Device, key: ec.EllipticCurvePrivateKey) -> bytes:
    """One simpleenroll with the device's IDevID over a fresh TLS connection; the answer's bytes."""
    body = csr_b64(key)
    ctx = ssl.create_default_context(cafile=str(root_pem))
    ctx.load_cert_chain(*map(str, dev.idevid_files))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(
            (
                f"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                f"Content-Type: application/pkcs10\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    return response


def test_workers_share_one_port_record_every_certificate_and_stop_on_sigterm(
    home: Home, root_pem: Path, tmp_path: Path
) -> None:
    devices = [make_device(home, tmp_path, f"SN-WORKER-{i}") for i in range(8)]
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in devices]
    served = start_serve(home.path, "--workers", "2")
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda dk: _enroll_over_tls(served.port, root_pem, *dk), zip(devices, keys, strict=True)
                )
            )
        fingerprints = set()
        for answer, key in zip(answers, keys, strict=True):
            header, _, payload = answer.partition(b"\r\n\r\n")
            assert header.startswith(b"HTTP/1.1 200"), answer[:300]
            cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(payload.split())))[0]
            assert cert.public_key() == key.public_key()
            fingerprints.add(cert.fingerprint(hashes.SHA256()).hex())
        assert len(fingerprints) == len(devices)
        assert served.stop() == 0
        assert "2 worker processes" in served.lines[-1] or "2 worker processes" in rest_of_output(served)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
    # Both workers wrote to one store: every certificate is recorded, the audit chain is intact.
    auth = open_authority(home, PASSPHRASE)
    try:
        with reading(auth.engine) as conn:
            rows = [repo.certificate_by_fingerprint(conn, fp) for fp in fingerprints]
        assert all(row is not None and row.profile == "ldevid" for row in rows)
    finally:
        auth.engine.dispose()
    result = ok(devid("audit", "verify", "--home", home.path))
    assert "audit chain intact" in result.stdout
