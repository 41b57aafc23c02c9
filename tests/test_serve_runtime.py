"""The server's process runtime under failure and attack: a killed worker is restarted while the
port keeps answering, a worker that cannot start makes the supervisor give up instead of spinning,
every connection phase has a deadline, one address can hold only so many connections, a client that
vanishes mid-request is one log line, and 600 slow-drip connections neither hold up an enrollment
nor grow a worker by 50 MB."""

# ruff: noqa: F811 - the `home` and `root_pem` fixtures come from test_serve

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import queue
import signal
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from e2e import devid, ok
from est_helpers import EstServer, csr_b64, provision, running_server
from test_serve import _reader, home, make_device, root_pem, start_serve  # noqa: F401

from devid.authority.setup import open_authority
from devid.bench.est import Identity, make_csrs, timed_load
from devid.bench.est import provision as provision_identities
from devid.bench.slowdrip import Attack, SlowDrip, loopback_sources, rss_mb, worker_pids
from devid.config import Home
from devid.errors import ConfigError
from devid.est.client import tls_context
from devid.pki.encoding import cert_pem
from devid.server.listener import ConnectionLimits
from devid.server.process import ServeOptions
from devid.server.supervisor import RestartPolicy, Supervisor, WorkerSpec
from devid.server.tls import ensure_server_certificate

PASSPHRASE = b"correct horse battery staple"
CACERTS = "/.well-known/est/cacerts"


def wait_for(condition: Callable[[], object], timeout: float = 30, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(step)


def get_cacerts(port: int, root: Path, source: str = "127.0.0.1") -> int:
    """One GET of /cacerts on a fresh TLS connection; its status."""
    ctx = ssl.create_default_context(cafile=str(root))
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", CACERTS)
        return conn.getresponse().status
    finally:
        conn.close()


def tls_connect(port: int, root: Path, source: str = "127.0.0.1") -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(root))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return ctx.wrap_socket(raw, server_hostname="localhost")


def closed_after(sock: socket.socket, drip: bytes = b"", every: float = 0.1, limit: float = 10) -> float:
    """Seconds until the server closes the connection, sending nothing or `drip` a byte every
    `every` seconds meanwhile."""
    start = time.monotonic()
    sock.settimeout(every)
    pending = iter(drip)
    while time.monotonic() - start < limit:
        try:
            byte = next(pending, None)
            if byte is not None:
                sock.sendall(bytes([byte]))
            if not sock.recv(1024):
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:  # a reset, or a TLS connection cut without close_notify
            return time.monotonic() - start
    pytest.fail(f"the server kept the connection open for {limit} s")


# --- the supervisor --------------------------------------------------------------------------


def test_a_killed_worker_is_restarted_while_the_port_keeps_answering(home: Home, root_pem: Path) -> None:
    served = start_serve(home.path, "--workers", "2")
    errors: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(served.proc.stderr, errors), daemon=True).start()
    try:
        workers_line = served.output.get(timeout=30)
        assert "2 worker processes (pids" in workers_line
        pids = [int(p) for p in workers_line.split("pids", 1)[1].strip(" ()\n").split(", ")]
        assert sorted(pids) == worker_pids(served.proc.pid)
        assert get_cacerts(served.port, root_pem) == 200

        results: list[tuple[float, int]] = []
        stop = threading.Event()

        def ask() -> None:
            while not stop.is_set():
                try:
                    status = get_cacerts(served.port, root_pem)
                except OSError:
                    status = 0
                results.append((time.monotonic(), status))

        asker = threading.Thread(target=ask)
        asker.start()
        wait_for(lambda: len(results) >= 3)
        killed_at = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        notices = []
        while not any("restarted: pid" in n for n in notices):
            notices.append(errors.get(timeout=30))
        restarted_at = time.monotonic()
        new_pid = int(notices[-1].rsplit("pid", 1)[1])
        asked = len(results)
        wait_for(lambda: len(results) >= asked + 5)
        stop.set()
        asker.join()

        assert any(f"worker 0 (pid {pids[0]}) was killed by SIGKILL" in n for n in notices), notices
        assert sorted(worker_pids(served.proc.pid)) == sorted([pids[1], new_pid])
        after = [status for at, status in results if at > killed_at]
        failed = [status for status in after if status != 200]
        # Only what the dying worker held fails: the request it was answering and connections the
        # kernel had already queued on its socket (SO_REUSEPORT does not move them); the other
        # worker answers the rest.
        assert len(failed) <= 3 and len(after) - len(failed) >= 5, results
        print(
            f"\nkill -9 one worker: {len(after)} requests after the kill, {len(failed)} failed; "
            f"new worker after {restarted_at - killed_at:.2f} s"
        )
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()


def _cacerts_subjects(port: int, root: Path) -> set[str]:
    ctx = ssl.create_default_context(cafile=str(root))
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        conn.request("GET", CACERTS)
        body = conn.getresponse().read()
    finally:
        conn.close()
    certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    return {cert.subject.rfc4514_string() for cert in certs}


def test_sighup_replaces_the_workers_one_at_a_time_and_they_serve_a_rotated_ca(
    home: Home, root_pem: Path
) -> None:
    """`devid ca rotate`, then SIGHUP to the supervisor: each worker is replaced by a fresh one
    (listening before its predecessor stops), and /cacerts serves the successor without a restart."""
    served = start_serve(home.path, "--workers", "2")
    notices: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(served.proc.stderr, notices), daemon=True).start()
    try:
        workers_line = served.output.get(timeout=30)
        pids = sorted(int(p) for p in workers_line.split("pids", 1)[1].strip(" ()\n").split(", "))
        before = _cacerts_subjects(served.port, root_pem)
        rotated = ok(devid("ca", "rotate", "--ca", "operational", "--json", "--home", home.path))
        successor = json.loads(rotated.stdout)["new"]
        assert _cacerts_subjects(served.port, root_pem) == before  # read once, at the workers' start

        results: list[int] = []
        stop = threading.Event()

        def ask() -> None:
            while not stop.is_set():
                try:
                    results.append(get_cacerts(served.port, root_pem))
                except OSError:
                    results.append(0)

        asker = threading.Thread(target=ask)
        asker.start()
        wait_for(lambda: len(results) >= 3)
        os.kill(served.proc.pid, signal.SIGHUP)
        said: list[str] = []
        while not any("reloaded:" in line for line in said):
            said.append(notices.get(timeout=60))
        asked = len(results)
        wait_for(lambda: len(results) >= asked + 3)
        stop.set()
        asker.join()

        assert "reloaded: 2 of 2 worker(s) replaced" in said[-1], said
        now = sorted(worker_pids(served.proc.pid))
        assert len(now) == 2 and not set(now) & set(pids), (pids, now)
        after = _cacerts_subjects(served.port, root_pem)
        assert len(after) == len(before) + 1 and before < after
        with open_authority(home, PASSPHRASE) as auth:
            assert auth.cas[successor].certificate.subject.rfc4514_string() in after
        # A successor listens before its predecessor stops: at most the connections the kernel had
        # queued on the closing socket (SO_REUSEPORT does not move them) fail.
        failed = [status for status in results if status != 200]
        assert len(failed) <= 2 and len(results) - len(failed) >= 6, results
        print(f"\nSIGHUP rolling reload: {len(results)} requests meanwhile, {len(failed)} failed")
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited (a zombie waits for a reaper that is not its supervisor)


def test_workers_stop_when_their_supervisor_is_killed(home: Home) -> None:
    served = start_serve(home.path, "--workers", "2")
    try:
        workers = worker_pids(served.proc.pid)
        assert len(workers) == 2
        served.proc.kill()
        served.proc.wait()
        wait_for(lambda: all(_gone(pid) for pid in workers))  # no orphan keeps the port
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()


def test_a_worker_that_keeps_failing_to_start_makes_the_supervisor_give_up(home: Home) -> None:
    authority = open_authority(home, PASSPHRASE)
    try:
        cert = ensure_server_certificate(
            authority, home.path / "tls", PASSPHRASE, ["localhost"], ["127.0.0.1"]
        )
    finally:
        authority.engine.dispose()
    spec = WorkerSpec(
        home.path, PASSPHRASE, cert.cert_file, cert.key_file, (), ServeOptions(port=0, deliver_events=False)
    )
    said: list[str] = []
    supervisor = Supervisor(spec, 1, policy=RestartPolicy(first_delay=0.05, give_up_after=2), say=said.append)

    def break_home_and_kill(port: int, pids: list[int]) -> None:
        (home.path / "devid.toml").rename(home.path / "devid.toml.away")
        os.kill(pids[0], signal.SIGKILL)

    with pytest.raises(
        ConfigError, match="worker 0 failed to start 2 times in a row, giving up: no devid home"
    ):
        supervisor.run(break_home_and_kill, lambda: None)
    assert "was killed by SIGKILL; restarting in 0.05 s" in said[0]
    assert "exited with status 2 (no devid home" in said[1] and "restarting in 0.1 s" in said[1]


# --- deadlines and the per-address cap ------------------------------------------------------------


@contextmanager
def server(home: Home, tmp_path: Path, **limits: float | int | None) -> Iterator[EstServer]:
    authority = open_authority(home, PASSPHRASE)
    try:
        with running_server(authority, tmp_path / "srv", limits=ConnectionLimits(**limits)) as srv:  # type: ignore[arg-type]
            yield srv
    finally:
        authority.engine.dispose()


def test_the_per_address_cap_refuses_the_next_connection_before_tls(
    home: Home, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with server(home, tmp_path, per_address=3) as srv, caplog.at_level(logging.WARNING):
        held = [tls_connect(srv.port, srv.root_pem) for _ in range(3)]
        # The fourth is closed at once, before any TLS: no ServerHello, no waiting for a ClientHello.
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        with suppress(ConnectionResetError):
            assert raw.recv(1024) == b""
        raw.close()
        with pytest.raises((ssl.SSLError, OSError)):
            tls_connect(srv.port, srv.root_pem).close()
        assert caplog.text.count("refusing connections from 127.0.0.1: it holds 3 already") == 1
        # Another address is not affected, and a freed slot is usable again.
        assert get_cacerts(srv.port, srv.root_pem, source="127.0.0.2") == 200
        held.pop().close()
        wait_for(lambda: _status(srv) == 200)
        for sock in held:
            sock.close()


def _status(srv: EstServer) -> int:
    try:
        return get_cacerts(srv.port, srv.root_pem)
    except OSError:
        return 0


def test_deadlines_close_a_slow_handshake_head_body_and_idle_connection(
    home: Home, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = open_authority(home, PASSPHRASE)
    try:
        device = provision(auth, "SN-DEADLINE", tmp_path / "devices")
    finally:
        auth.engine.dispose()
    # Keep-alive longer than the others: each close below is the deadline it is about.
    limits = {"handshake_timeout": 0.5, "header_timeout": 0.5, "body_timeout": 0.5, "keepalive_timeout": 3.0}
    with server(home, tmp_path, **limits) as srv:
        # A TCP connection that never starts TLS.
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        assert 0.3 < closed_after(raw) < 3
        raw.close()

        # A request head dripping a byte every 0.1 s: the bytes do not extend the deadline.
        with tls_connect(srv.port, srv.root_pem) as tls:
            assert (
                0.3
                < closed_after(tls, b"GET /.well-known/est/cacerts HTTP/1.1\r\nX-Slow: " + b"a" * 100)
                < 2.5
            )

        # A body dripping after its head.
        ctx = ssl.create_default_context(cafile=str(srv.root_pem))
        ctx.load_cert_chain(*map(str, device.idevid_files))
        body = csr_b64(ec.generate_private_key(ec.SECP256R1()))
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls, caplog.at_level(logging.WARNING):
            tls.sendall(
                b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/pkcs10\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            assert 0.3 < closed_after(tls, body) < 2.5
            wait_for(lambda: "ended mid-request" in caplog.text)
        assert "no complete request body from 127.0.0.1 within 0.5 s" in caplog.text
        assert "Traceback" not in caplog.text

        # An idle kept-alive connection after a complete request.
        with tls_connect(srv.port, srv.root_pem) as tls:
            tls.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n\r\n")
            tls.settimeout(5)
            assert tls.recv(65536).startswith(b"HTTP/1.1 200")
            assert 2.7 < closed_after(tls) < 6


def test_a_client_gone_mid_request_is_one_log_line(home: Home, root_pem: Path, tmp_path: Path) -> None:
    device = make_device(home, tmp_path, "SN-GONE")
    served = start_serve(home.path)
    try:
        ctx = ssl.create_default_context(cafile=str(root_pem))
        ctx.load_cert_chain(*map(str, device.idevid_files))
        body = csr_b64(ec.generate_private_key(ec.SECP256R1()))
        raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/pkcs10\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:100]
            )
            time.sleep(0.3)  # the handler is reading the body
        assert get_cacerts(served.port, root_pem) == 200
        assert served.stop() == 0
        errors = served.proc.stderr.read() if served.proc.stderr else ""
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
    lines = [
        line for line in errors.splitlines() if "Deprecation" not in line and "dh.DHPublicKey" not in line
    ]
    assert lines == [
        "POST /.well-known/est/simpleenroll from 127.0.0.1 ended mid-request: "
        "the client closed the connection"
    ]


# --- the slow-drip attack -------------------------------------------------------------------------


def _enroll_latencies(port: int, device: ssl.SSLContext, count: int) -> list[float]:
    run = timed_load(f"https://127.0.0.1:{port}", [device], make_csrs(count), keep_alive=False)
    assert run.failures == 0
    return run.latencies


def test_600_slow_drip_connections_neither_hold_up_an_enrollment_nor_grow_the_worker(home: Home) -> None:
    authority = open_authority(home, PASSPHRASE)
    try:
        identity: Identity = provision_identities(authority, 1)[0]
        trust = cert_pem(authority.root)
    finally:
        authority.engine.dispose()
    device = tls_context(trust, identity.chain, identity.key)
    # One process takes every connection; 20 source addresses defeat the per-address cap (64).
    served = start_serve(home.path, "--header-timeout", "6", "--handshake-timeout", "6")
    try:
        _enroll_latencies(served.port, device, 5)  # warm-up
        baseline = statistics.median(_enroll_latencies(served.port, device, 7))
        before = rss_mb(served.proc.pid)
        drip = SlowDrip("127.0.0.1", served.port, 600, loopback_sources(20), 1.0, tls_context(trust))
        with Attack(drip) as attack:
            held = attack.wait_held(600, timeout=90)
            during = statistics.median(_enroll_latencies(served.port, device, 7))
            held = min(held, drip.held)
            growth = rss_mb(served.proc.pid) - before
            time.sleep(7)  # past the header deadline: connections are closed and opened again
            during = max(during, statistics.median(_enroll_latencies(served.port, device, 7)))
            growth = max(growth, rss_mb(served.proc.pid) - before)
            closed = drip.closed_by_server
        print(
            f"\nslow drip: {held} connections held, {closed} closed by the header deadline; enrollment p50 "
            f"{during * 1000:.0f} ms during vs {baseline * 1000:.0f} ms without; worker RSS +{growth:.1f} MB"
        )
        assert held >= 540
        assert closed >= 300  # the deadline closed them while they dripped
        assert growth < 50
        assert during < max(5 * baseline, baseline + 0.25)
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()


def test_bench_slowdrip_json(tmp_path: Path) -> None:
    args = ("--connections", "40", "--addresses", "2", "--n", "10", "--hold", "1", "--server-workers", "1")
    result = ok(devid("bench", "slowdrip", *args, "--json", cwd=tmp_path))
    figures = {f["name"]: f for f in map(json.loads, result.stdout.splitlines())}
    assert figures["slowdrip.connections_held"]["value"] >= 35
    for name in ("slowdrip.enroll_p50", "slowdrip.enroll_p99"):
        assert figures[name]["unit"] == "ms" and figures[name]["baseline"] > 0 and figures[name]["ratio"] > 0
    assert figures["slowdrip.enroll_failures"]["value"] == 0
    assert figures["slowdrip.worker_rss_growth"]["unit"] == "MB"
    assert list(tmp_path.iterdir()) == []
