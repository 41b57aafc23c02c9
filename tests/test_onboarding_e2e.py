"""Issue "fleet onboarding", done when: a manufacturer CA made with openssl is registered, its
devices register just in time and enroll over EST, land on hubs per policy, and are blocked when
their group is disabled — all through the `devid` CLI, the admin API and a running `devid serve`
(a separate process: every registry change crosses processes through the store), curl as device."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from e2e import devid, flat, ok, run
from manufacturer import Manufacturer
from test_serve import Served, start_serve

from devid.authority.setup import init_home

PASSPHRASE = b"correct horse battery staple"


def curl(served: Served, root: Path, *args: str | Path) -> tuple[int, dict[str, str], str]:
    out = run("curl", "-sS", "--cacert", root, "-D", "-", *args).stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def enroll(served: Served, root: Path, maker: Manufacturer, serial: str) -> tuple[int, dict[str, str], str]:
    _, key, chain = maker.device(serial)
    csr = maker.directory / f"{serial}.csr.pem"
    run("openssl", "req", "-new", "-key", key, "-subj", f"/CN={serial}", "-out", csr)
    b64 = maker.directory / f"{serial}.b64"
    b64.write_text("".join(csr.read_text().splitlines(keepends=True)[1:-1]))
    return curl(
        served, root, "--cert", chain, "--key", key, "-H", "Content-Type: application/pkcs10",
        "--data-binary", f"@{b64}", served.est("simpleenroll"),
    )  # fmt: skip


def until(check: object, seconds: float = 10.0) -> None:
    """Poll `check()` (a registry change reaches the server within about a second)."""
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the running server did not pick up the change"
        time.sleep(0.3)


def test_manufacturer_fleet_onboarding_through_cli_api_and_est(tmp_path: Path) -> None:
    home = init_home(tmp_path / "home", org="Acme", passphrase=PASSPHRASE).path
    root = tmp_path / "trust.pem"
    root.write_text(ok(devid("ca", "export", "--pem", "--home", home)).stdout)
    served = start_serve(home)
    try:
        acme = Manufacturer(tmp_path / "acme")
        # 1. Registration with proof of possession, from the CLI, while the server runs.
        code = ok(devid("manufacturer", "register-code", "--home", home)).stdout.strip().splitlines()[-1]
        acme.verification(code)
        ok(
            devid(
                "manufacturer", "register", "acme", "--ca-cert", acme.directory / "root.pem",
                "--verification-cert", acme.directory / "verify-root.pem", "--auto-register",
                "--auto-activate", "--home", home,
            )
        )  # fmt: skip
        # 2. An operator token for the API (printed alone on the last line).
        token = ok(devid("api-token", "create", "ops", "--role", "operator", "--home", home)).stdout
        bearer = ("-H", f"Authorization: Bearer {token.strip().splitlines()[-1]}")
        api = f"https://127.0.0.1:{served.port}/api/v1"
        # 3. Hubs through the API, the group through the CLI.
        for name, region in (("eu1", "eu"), ("us1", "us")):
            body = json.dumps({"name": name, "url": f"mqtts://{name}.example:8883", "region": region})
            status, _, answer = curl(
                served, root, *bearer, "-H", "Content-Type: application/json", "--data", body, f"{api}/hubs"
            )
            assert status == 201, answer
        ok(
            devid(
                "group", "create", "sensors", "--signing-cert", acme.directory / "signing.pem",
                "--allocation", "hashed", "--hub", "eu1", "--hub", "us1", "--policy", "short-lived",
                "--lifetime", "7d", "--home", home,
            )
        )  # fmt: skip
        # 4. Devices register just in time over EST and land on the group's hubs.
        until(lambda: enroll(served, root, acme, "ACME-PROBE")[0] == 200)
        landed = {}
        for i in range(6):
            status, headers, body = enroll(served, root, acme, f"ACME-{i:04d}")
            assert status == 200, body
            assert headers["devid-policy"] == "short-lived"
            landed[f"ACME-{i:04d}"] = headers["devid-hub"]
        assert set(landed.values()) <= {"eu1", "us1"}
        listed = [
            json.loads(line)
            for line in ok(devid("device", "list", "--json", "--home", home)).stdout.splitlines()
        ]
        by_serial = {d["serial"]: d for d in listed}
        for serial, hub in landed.items():
            assert by_serial[serial]["hub"] == hub and by_serial[serial]["manufacturer"] == "acme"
            assert by_serial[serial]["state"] == "ACTIVE"
        status, _, answer = curl(served, root, *bearer, f"{api}/devices/ACME-0000")
        assert status == 200 and json.loads(answer)["state"] == "ACTIVE", answer
        # 5. Disabling the group (CLI) blocks new registrations in the running server.
        ok(devid("group", "disable", "sensors", "--home", home))
        # A new serial each try: one that registered before the server saw the change is a device
        # now, and its next try (with a new key) is refused for its identity, not for the group.
        tries = itertools.count()
        until(
            lambda: (
                b"enrollment-disabled" in enroll(served, root, acme, f"ACME-LATE-{next(tries)}")[2].encode()
            )
        )
        status, _, body = enroll(served, root, acme, "ACME-LATER")
        assert status == 403 and "enrollment-disabled" in body
        assert "ACME-LATER" not in flat(ok(devid("device", "list", "--json", "--home", home)).stdout)
        # 6. Re-enabled through the API with the version it read: enrollment works again.
        status, headers, answer = curl(served, root, *bearer, f"{api}/groups/sensors")
        version = json.loads(answer)["version"]
        status, _, answer = curl(
            served, root, *bearer, "-X", "PATCH", "-H", "Content-Type: application/json",
            "-H", f"If-Match: {version}", "--data", json.dumps({"enabled": True}), f"{api}/groups/sensors",
        )  # fmt: skip
        assert status == 200, answer
        until(lambda: enroll(served, root, acme, "ACME-AGAIN")[0] == 200)
        # Every step is in the hash-chained audit log, which verifies.
        ok(devid("audit", "verify", "--home", home))
    finally:
        assert served.stop() == 0
