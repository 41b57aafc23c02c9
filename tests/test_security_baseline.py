"""Security baseline: TLS 1.2+ with modern suites only (openssl s_client as the peer), no secret in
any log after a run of the CLI and the server, and no CA key in clear anywhere in the home."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import PASSPHRASE, devid, ok
from est_helpers import EstServer, csr_b64
from test_serve import rest_of_output, start_serve

from devid.authority.core import AUDIT_KEY_NAME
from devid.authority.setup import HIERARCHY, keystore_for
from devid.config import Home

#: TLS 1.2 suites a default OpenSSL server accepts and devid must not: CBC with SHA-2 or SHA-1 MACs,
#: and RSA key transport (no forward secrecy).
WEAK_SUITES = (
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-ECDSA-AES128-SHA",
    "AES128-GCM-SHA256",
)


def _handshake(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )


def _protocol(run: subprocess.CompletedProcess[str]) -> str | None:
    """The protocol a handshake agreed on, or None when it failed."""
    found = re.search(r"^New, (TLSv[0-9.]+), Cipher is ", run.stdout, re.MULTILINE)
    return found.group(1) if found and run.returncode == 0 else None


def test_tls_refuses_old_protocols_and_weak_suites(server: EstServer) -> None:
    port = server.port
    assert _protocol(_handshake(port, "-tls1_3")) == "TLSv1.3"
    assert _protocol(_handshake(port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")) == "TLSv1.2"
    assert _protocol(_handshake(port, "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")) == "TLSv1.2"
    # SECLEVEL=0 lets this client offer what its defaults no longer do; the server must hang up
    # (an alert, or a close before its hello) rather than agree.
    for offer in (
        ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
        *(["-tls1_2", "-cipher", f"{weak}@SECLEVEL=0"] for weak in WEAK_SUITES),
    ):
        refused = _handshake(port, *offer)
        assert _protocol(refused) is None, offer
        assert re.search(r"alert|unexpected eof", refused.stderr), (offer, refused.stderr)


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----")


def clear_private_keys(root: Path, secrets: list[bytes]) -> list[tuple[Path, str]]:
    """Files under `root` holding a private key in clear: a PEM block that is not ENCRYPTED, a DER
    private key that loads without a password, or one of `secrets` (raw private values) as bytes
    or hex."""
    found = []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        data = file.read_bytes()
        for label in _PEM_BLOCK.findall(data):
            if b"ENCRYPTED" not in label:
                found.append((file, f"PEM {label.decode()}"))
        try:
            serialization.load_der_private_key(data, None)
            found.append((file, "DER private key"))
        except (ValueError, TypeError):
            pass
        for secret in secrets:
            if secret in data or secret.hex().encode() in data.lower():
                found.append((file, "a CA private value"))
    return found


def _ca_private_values(home: Home) -> list[bytes]:
    keystore = keystore_for(home, PASSPHRASE.encode())
    labels = [home.config.key_prefix + name for name, *_ in HIERARCHY]
    keys = [keystore.load(label) for label in [*labels, home.config.key_prefix + AUDIT_KEY_NAME]]
    return [k.private_numbers().private_value.to_bytes(32, "big") for k in keys]


def test_the_key_scan_finds_a_clear_key(tmp_path: Path) -> None:
    """The scanner below is not blind: a clear PEM, a clear DER and a leaked value are all found."""
    key = ec.generate_private_key(ec.SECP256R1())
    plain = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    (tmp_path / "a.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, plain))
    (tmp_path / "b.der").write_bytes(key.private_bytes(serialization.Encoding.DER, pkcs8, plain))
    value = key.private_numbers().private_value.to_bytes(32, "big")
    (tmp_path / "c.log").write_text(f"debug: {value.hex()}\n")
    kinds = {(p.name, kind) for p, kind in clear_private_keys(tmp_path, [value])}
    assert kinds >= {
        ("a.pem", "PEM PRIVATE KEY"),
        ("b.der", "DER private key"),
        ("c.log", "a CA private value"),
    }


def test_no_secret_in_any_log_and_no_clear_ca_key_on_disk(tmp_path: Path) -> None:
    h = tmp_path / "H"
    logs: list[str] = []

    def cli(*args: str | Path) -> str:
        """Run a command; every byte it prints is a log, except the returned last stdout line."""
        result = ok(devid(*args, "--home", h))
        *shown, last = result.stdout.splitlines() or [""]
        logs.extend([*shown, result.stderr])
        return last

    logs.append(cli("init", "--org", "Acme"))
    logs.append(cli("factory", "run", "--count", "1"))
    logs.append(cli("device", "add", "SN-B", "--model", "m1"))
    secret = cli("device", "enroll-secret", "SN-B")  # printed once, alone on its line, by design
    token = cli("api-token", "create", "bot", "--role", "admin")
    assert len(secret) >= 32 and token.startswith("devid_")
    served = start_serve(h, "--log-json")
    try:
        root = tmp_path / "root.pem"
        root.write_text(ok(devid("ca", "export", "--home", h)).stdout)
        (tmp_path / "csr.b64").write_bytes(csr_b64(ec.generate_private_key(ec.SECP256R1())))
        curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(root)]
        api = f"https://127.0.0.1:{served.port}/api/v1/devices"
        enroll = [
            *curl,
            "--data-binary",
            f"@{tmp_path / 'csr.b64'}",
            "-H",
            "Content-Type: application/pkcs10",
        ]
        asked = {
            "good token": [*curl, "-H", f"Authorization: Bearer {token}", api],
            "bad token": [*curl, "-H", f"Authorization: Bearer {token}x", api],
            "passphrase as token": [*curl, "-H", f"Authorization: Bearer {PASSPHRASE}", api],
            "wrong secret": [*enroll, "-u", f"SN-B:{PASSPHRASE}", served.est("simpleenroll")],
            "secret": [*enroll, "-u", f"SN-B:{secret}", served.est("simpleenroll")],
            "secret again": [*enroll, "-u", f"SN-B:{secret}", served.est("simpleenroll")],
        }
        answers = {
            name: subprocess.run(args, capture_output=True, text=True).stdout for name, args in asked.items()
        }
        assert answers == {
            "good token": "200",
            "bad token": "401",
            "passphrase as token": "401",
            "wrong secret": "401",
            "secret": "200",
            "secret again": "403",
        }
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
    logs.append(rest_of_output(served))
    assert served.proc.stderr is not None
    server_log = served.proc.stderr.read()
    assert sum(line.startswith("{") for line in server_log.splitlines()) >= 6  # one JSON line a request
    logs.append(server_log)
    logs.append(cli("audit", "list", "--since", "2000-01-01", "--json"))
    logs.append(cli("api-token", "list", "--json"))
    logs.extend(p.read_text(errors="replace") for p in h.rglob("*.log"))
    text = "\n".join(logs)
    home = Home.load(h)
    ca_values = _ca_private_values(home)
    leaks = {
        "passphrase": PASSPHRASE in text,
        "api token": token in text or token[len("devid_") :] in text,
        "enrollment secret": secret in text,
        "basic credentials": base64.b64encode(f"SN-B:{secret}".encode()).decode() in text,
        "PEM private key": "PRIVATE KEY" in text,
        "CA private value": any(v.hex() in text.lower() for v in ca_values),
    }
    assert not any(leaks.values()), {k: v for k, v in leaks.items() if v}
    # The home (store, keys, TLS files, device folders) holds no CA key in clear.
    assert clear_private_keys(h, ca_values) == []
    assert "audit chain intact" in ok(devid("audit", "verify", "--home", h)).stdout
