"""The registry from the `devid` command line, end to end: a manufacturer CA made by the openssl CLI
is registered with proof of possession (and every way to get that wrong is refused, changing
nothing), hubs, enrollment groups and individual enrollments are managed, devices activated, and
every `--json` output parses."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e import PASSPHRASE, count, devid, devid_many, ok, query, run

from devid.authority.setup import open_authority
from devid.config import Home
from devid.registry.onboarding import Registry

CODE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Ca:
    cert: Path
    key: Path


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def one(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The single JSON object a successful `--json` command printed."""
    [obj] = json_lines(ok(result).stdout)
    return obj


def refused(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    """Exit status 2 with `error: ...` naming the problem (each phrase in the message)."""
    assert result.returncode == 2, f"expected a refusal:\n{result.stdout}\n{result.stderr}"
    message = " ".join(result.stderr.split())
    assert message.startswith("error:"), message
    for phrase in phrases:
        assert phrase in message, message


def make_ca(work: Path, name: str, *, rsa: bool = False, ca: bool = True, subject: str | None = None) -> Ca:
    """A self-signed CA made by the openssl CLI: EC P-256 (or RSA from `openssl genrsa`)."""
    key, cert = work / f"{name}.key", work / f"{name}.pem"
    if rsa:
        run("openssl", "genrsa", "-out", key, "2048")
    else:
        run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    constraints = "critical,CA:TRUE" if ca else "critical,CA:FALSE"
    usage = "critical,keyCertSign,cRLSign" if ca else "critical,digitalSignature"
    run(
        "openssl", "req", "-x509", "-new", "-key", key, "-days", "365", "-out", cert,
        "-subj", subject or f"/CN={name} Manufacturing CA/O={name}",
        "-addext", f"basicConstraints={constraints}", "-addext", f"keyUsage={usage}",
    )  # fmt: skip
    return Ca(cert, key)


def verification(work: Path, code: str, signer: Ca, name: str) -> Path:
    """A verification certificate with CN = code, signed by `signer` with `openssl x509 -req`."""
    key, csr, cert = work / f"{name}.vkey", work / f"{name}.csr", work / f"{name}.vpem"
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    run("openssl", "req", "-new", "-key", key, "-subj", f"/CN={code}", "-out", csr)
    run(
        "openssl", "x509", "-req", "-in", csr, "-CA", signer.cert, "-CAkey", signer.key,
        "-CAcreateserial", "-days", "1", "-out", cert,
    )  # fmt: skip
    return cert


def registration_code(result: subprocess.CompletedProcess[str]) -> str:
    """`devid manufacturer register-code` prints the code alone on its last line."""
    code = ok(result).stdout.splitlines()[-1]
    assert CODE.match(code), result.stdout
    return code


def snapshot(home: Path) -> tuple[object, ...]:
    """Everything a registry write could change."""
    return (
        query(home, "SELECT * FROM manufacturers ORDER BY id"),
        query(home, "SELECT code, used_at FROM registration_codes ORDER BY id"),
        query(home, "SELECT * FROM enrollments ORDER BY id"),
        query(home, "SELECT * FROM hubs ORDER BY id"),
        query(home, "SELECT serial, state, updated_at FROM devices ORDER BY id"),
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry-cli")


@pytest.fixture(scope="module")
def home(work: Path) -> Path:
    ok(devid("init", "--home", work / "H", "--org", "Acme"))
    return work / "H"


@pytest.fixture(scope="module")
def codes(home: Path) -> Iterator[str]:
    """Fresh registration codes, made together (each `devid` call costs an interpreter start)."""
    calls = [("manufacturer", "register-code", "--home", str(home))] * 8
    return iter([registration_code(r) for r in devid_many(calls)])


@pytest.fixture(scope="module")
def contoso_code(codes: Iterator[str]) -> str:
    """The registration code Contoso's CA was registered with (spent)."""
    return next(codes)


@pytest.fixture(scope="module")
def contoso(home: Path, work: Path, contoso_code: str) -> Ca:
    """Contoso's CA, registered with JITR on."""
    ca = make_ca(work, "contoso")
    code = contoso_code
    proof = verification(work, code, ca, "contoso")
    info = one(
        devid(
            "manufacturer", "register", "contoso", "--ca-cert", ca.cert, "--verification-cert", proof,
            "--auto-register", "--home", home, "--json",
        )
    )  # fmt: skip
    assert info["name"] == "contoso" and info["state"] == "ACTIVE"
    assert info["auto_register"] is True and info["auto_activate"] is False
    # The store keeps the code's MAC, never the code; the one used is spent.
    assert query(home, "SELECT count(*) FROM registration_codes WHERE used_at IS NOT NULL") == [(1,)]
    assert query(home, "SELECT id FROM registration_codes WHERE code = ?", code) == []
    return ca


# --- manufacturers ---------------------------------------------------------------------------------


def test_register_code_explains_itself_and_registered_ca_is_listed(home: Path, contoso: Ca) -> None:
    text = ok(devid("manufacturer", "register-code", "--home", home)).stdout
    assert "openssl x509 -req" in text and "CN" in text
    listed = json_lines(ok(devid("manufacturer", "list", "--home", home, "--json")).stdout)
    assert [m["name"] for m in listed] == ["contoso"]
    shown = one(devid("manufacturer", "show", "contoso", "--home", home, "--json"))
    assert shown == listed[0] and "CN=contoso Manufacturing CA" in str(shown["subject"])


REFUSALS = {
    # case: (phrases the error names, whether the verification uses a fresh, unspent code)
    "wrong-code": (["not a registration code devid issued"], False),
    "reused-code": (["already used"], False),
    "other-key": (["not signed by this CA's key"], True),
    "not-a-ca": (["not a CA"], True),
    "rsa-ca": (["P-256"], True),
    "duplicate-name": (["'contoso' is already registered"], True),
    "duplicate-ca": (["already registered as 'contoso'"], True),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_register_refused_changes_nothing(
    case: str, home: Path, work: Path, contoso: Ca, contoso_code: str, codes: Iterator[str]
) -> None:
    phrases, fresh = REFUSALS[case]
    code = next(codes) if fresh else "0" * 64
    name = f"m-{case}"
    ca = make_ca(work, case, rsa=case == "rsa-ca", ca=case != "not-a-ca")
    signer = ca
    if case == "reused-code":
        code = contoso_code
    elif case == "other-key":  # an impostor: the same subject name, another key
        signer = make_ca(work, "impostor", subject=f"/CN={case} Manufacturing CA/O={case}")
    elif case == "duplicate-name":
        name = "contoso"
    elif case == "duplicate-ca":
        ca = signer = contoso
    proof = verification(work, code, signer, case)
    before = snapshot(home)
    result = devid(
        "manufacturer", "register", name, "--ca-cert", ca.cert, "--verification-cert", proof, "--home", home
    )
    refused(result, *phrases)
    assert snapshot(home) == before  # the fresh code, too, is still unspent
    refusals = "SELECT count(*) FROM audit_events WHERE action = ? AND outcome = 'refused' AND subject = ?"
    assert query(home, refusals, "manufacturer.register", name) != [(0,)]  # the refusal is audited


def test_deactivate_activate_and_stale_update(home: Path, contoso: Ca) -> None:
    off = one(devid("manufacturer", "deactivate", "contoso", "--home", home, "--json"))
    assert off["state"] == "INACTIVE"
    assert one(devid("manufacturer", "show", "contoso", "--home", home, "--json"))["state"] == "INACTIVE"
    on = one(devid("manufacturer", "activate", "contoso", "--home", home, "--json"))
    assert on["state"] == "ACTIVE" and on["version"] == off["version"] + 1
    before = snapshot(home)
    stale = devid("manufacturer", "update", "contoso", "--auto-activate", "--version", "1", "--home", home)
    refused(stale, "changed since version 1", "stale-version")
    assert snapshot(home) == before
    refused(devid("manufacturer", "activate", "nobody", "--home", home), "no manufacturer named 'nobody'")


# --- hubs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hubs(home: Path) -> list[str]:
    created = devid_many(
        [
            ("hub", "create", "eu1", "--url", "mqtts://eu1.example:8883", "--region", "eu", "--weight", "2",
             "--latency", "eu=10", "--latency", "us=90", "--home", str(home), "--json"),
            ("hub", "create", "us1", "--url", "mqtts://us1.example:8883", "--region", "us",
             "--home", str(home)),
        ]
    )  # fmt: skip
    eu1 = one(created[0])
    assert eu1 == {
        "name": "eu1", "url": "mqtts://eu1.example:8883", "region": "eu", "weight": 2, "enabled": True,
        "latencies": {"eu": 10.0, "us": 90.0}, "version": 1,
    }  # fmt: skip
    assert "hub us1 created" in ok(created[1]).stdout
    return ["eu1", "us1"]


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["create", "eu1", "--url", "mqtts://other:8883"], ["'eu1' already exists"]),
        (["create", "x1", "--url", "ftp://x"], ["not an endpoint URL"]),
        (["create", "x1", "--url", "mqtts://x", "--latency", "eu"], ["'eu' is not KEY=VALUE"]),
        (["create", "x1", "--url", "mqtts://x", "--weight", "0"], ["weight must be"]),
        (["update", "eu1", "--weight", "5", "--version", "7"], ["changed since version 7"]),
        (["update", "eu1"], ["no change given"]),
        (["remove", "nowhere"], ["no hub named 'nowhere'"]),
    ],
    ids=["duplicate", "url", "latency", "weight", "stale", "no-change", "unknown"],
)
def test_hub_refusals_change_nothing(
    home: Path, hubs: list[str], args: list[str], phrases: list[str]
) -> None:
    before = snapshot(home)
    refused(devid("hub", *args, "--home", home), *phrases)
    assert snapshot(home) == before


def test_hub_update_disable_enable_remove(home: Path, hubs: list[str]) -> None:
    updated = one(devid("hub", "update", "us1", "--weight", "3", "--version", "1", "--home", home, "--json"))
    assert updated["weight"] == 3 and updated["region"] == "us" and updated["version"] == 2
    assert one(devid("hub", "disable", "us1", "--home", home, "--json"))["enabled"] is False
    assert one(devid("hub", "enable", "us1", "--home", home, "--json"))["enabled"] is True
    ok(devid("hub", "create", "tmp1", "--url", "wss://tmp.example/mqtt", "--home", home))
    assert "hub tmp1 removed" in ok(devid("hub", "remove", "tmp1", "--home", home)).stdout
    listed = json_lines(ok(devid("hub", "list", "--home", home, "--json")).stdout)
    assert sorted(h["name"] for h in listed) == ["eu1", "us1"]  # made concurrently
    refused(devid("hub", "show", "tmp1", "--home", home), "no hub named 'tmp1'")


# --- enrollment groups and individual enrollments --------------------------------------------------


@pytest.fixture(scope="module")
def group(home: Path, work: Path, contoso: Ca, hubs: list[str]) -> dict[str, Any]:
    props = work / "props.json"
    props.write_text(json.dumps({"fw": {"channel": "stable"}, "tier": "silver"}))
    return one(
        devid(
            "group", "create", "contoso-sensors", "--signing-cert", contoso.cert, "--policy", "renew",
            "--lifetime", "30d", "--allocation", "static", "--hub", "eu1", "--reprovision", "reset",
            "--properties-json", props, "--property", "tier=gold", "--home", home, "--json",
        )
    )  # fmt: skip


def test_group_create_records_every_setting(home: Path, group: dict[str, Any], contoso: Ca) -> None:
    assert {k: v for k, v in group.items() if k != "signing_certificates"} == {
        "kind": "group", "name": "contoso-sensors", "enabled": True, "version": 1, "policy": "renew",
        "lifetime_hours": 720.0, "allocation": "static", "hubs": ["eu1"], "webhook_url": None,
        "reprovision": "reset", "properties": {"fw": {"channel": "stable"}, "tier": "gold"},
    }  # fmt: skip
    [signing] = group["signing_certificates"]
    assert "contoso" in signing["subject"]
    assert json_lines(ok(devid("group", "list", "--home", home, "--json")).stdout) == [group]
    assert "contoso-sensors" in ok(devid("group", "show", "contoso-sensors", "--home", home)).stdout


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["create", "g-untrusted", "--signing-cert", "{stranger}"], ["is not devid's manufacturing CA"]),
        (["create", "contoso-sensors", "--signing-cert", "{contoso}"], ["already exists"]),
        (["create", "g-x", "--signing-cert", "{contoso}", "--hub", "mars"], ["no hub named 'mars'"]),
        (
            ["create", "g-x", "--signing-cert", "{contoso}", "--policy", "renew", "--lifetime", "soon"],
            ["'soon' is not a duration"],
        ),
        (["create", "g-x", "--signing-cert", "{contoso}", "--lifetime", "3d"], ["needs a renewal policy"]),
        (["create", "g-x", "--signing-cert", "{contoso}", "--allocation", "custom"], ["needs --webhook"]),
        (
            ["update", "contoso-sensors", "--allocation", "hashed", "--version", "1"],
            ["changed since version 1"],
        ),
        (["update", "nothing-here", "--policy", "renew"], ["no enrollment named 'nothing-here'"]),
    ],
    ids=["untrusted", "duplicate", "hub", "lifetime", "no-policy", "webhook", "stale", "unknown"],
)
def test_group_refusals_change_nothing(
    home: Path, work: Path, contoso: Ca, group: dict[str, Any], args: list[str], phrases: list[str]
) -> None:
    if "--version" in args:  # another operator's change lands after this one read version 1
        ok(devid("group", "update", "contoso-sensors", "--property", "note=x", "--home", home))
    stranger = make_ca(work, "stranger").cert if "{stranger}" in args else None
    filled = [a.format(stranger=stranger, contoso=contoso.cert) for a in args]
    before = snapshot(home)
    refused(devid("group", *filled, "--home", home), *phrases)
    assert snapshot(home) == before


def test_group_disable_enable_update(home: Path, group: dict[str, Any]) -> None:
    disabled = one(devid("group", "disable", "contoso-sensors", "--home", home, "--json"))
    assert disabled["enabled"] is False
    assert one(devid("group", "enable", "contoso-sensors", "--home", home, "--json"))["enabled"] is True
    current = one(devid("group", "show", "contoso-sensors", "--home", home, "--json"))
    updated = one(
        devid(
            "group", "update", "contoso-sensors", "--lifetime", "12h", "--allocation", "weighted",
            "--hub", "eu1", "--hub", "us1", "--property", "region=eu", "--version", str(current["version"]),
            "--home", home, "--json",
        )
    )  # fmt: skip
    assert updated["version"] == current["version"] + 1
    assert updated["lifetime_hours"] == 12.0 and updated["policy"] == "renew"  # policy kept
    assert updated["allocation"] == "weighted" and updated["hubs"] == ["eu1", "us1"]
    assert updated["reprovision"] == "reset"  # not given: kept
    assert updated["properties"] == {**current["properties"], "region": "eu"}


def test_individual_enrollment_lifecycle(home: Path, hubs: list[str]) -> None:
    created = one(
        devid("enrollment", "create", "SN-77", "--allocation", "static", "--hub", "us1", "--property",
              "owner=lab", "--home", home, "--json")
    )  # fmt: skip
    assert created["kind"] == "individual" and created["hubs"] == ["us1"]
    assert created["properties"] == {"owner": "lab"} and created["certificate_fingerprint"] is None
    assert one(devid("enrollment", "disable", "SN-77", "--home", home, "--json"))["enabled"] is False
    assert one(devid("enrollment", "enable", "SN-77", "--home", home, "--json"))["enabled"] is True
    updated = one(devid("enrollment", "update", "SN-77", "--policy", "short-lived", "--home", home, "--json"))
    assert updated["policy"] == "short-lived" and updated["hubs"] == ["us1"]
    listed = json_lines(ok(devid("enrollment", "list", "--home", home, "--json")).stdout)
    assert [e["name"] for e in listed] == ["SN-77"]  # groups are not individual enrollments
    assert one(devid("enrollment", "show", "SN-77", "--home", home, "--json")) == listed[0]


# --- devices ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jitr_device(home: Path, work: Path, contoso: Ca, group: dict[str, Any]) -> str:
    """A contoso device registered just in time (as the EST server does on its first contact):
    PENDING_ACTIVATION, admitted by the group, allocated to one of its hubs."""
    serial = "CTS-0001"
    key, csr, cert = work / "dev.key", work / "dev.csr", work / "dev.pem"
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    run("openssl", "req", "-new", "-key", key, "-subj", f"/serialNumber={serial}/CN=sensor", "-out", csr)
    run(
        "openssl", "x509", "-req", "-in", csr, "-CA", contoso.cert, "-CAkey", contoso.key,
        "-CAcreateserial", "-days", "30", "-outform", "DER", "-out", cert,
    )  # fmt: skip
    auth = open_authority(Home.load(home), PASSPHRASE.encode())
    registry = Registry(auth)
    client = registry.identify(cert.read_bytes(), [cert.read_bytes()])
    registry.register(client, registry.admit(client))
    auth.engine.dispose()
    return serial


def test_jitr_device_listed_with_registry_columns_and_activated(home: Path, jitr_device: str) -> None:
    [device] = json_lines(
        ok(devid("device", "list", "--manufacturer", "contoso", "--home", home, "--json")).stdout
    )
    assert device["serial"] == jitr_device and device["state"] == "PENDING_ACTIVATION"
    assert device["enrollment"] == "group:contoso-sensors" and device["hub"] in ("eu1", "us1")
    assert device["properties"]["tier"] == "gold"
    on_hub = json_lines(ok(devid("device", "list", "--hub", device["hub"], "--home", home, "--json")).stdout)
    assert [d["serial"] for d in on_hub] == [jitr_device]
    table = ok(devid("device", "list", "--state", "PENDING_ACTIVATION", "--home", home)).stdout
    assert jitr_device in table and "contoso" in table and "group:contoso-sensors" in table
    refused(devid("device", "activate", jitr_device, "--version", "99", "--home", home), "changed since")
    active = one(devid("device", "activate", jitr_device, "--reason", "checked", "--home", home, "--json"))
    assert active["state"] == "ACTIVE" and active["version"] == device["version"] + 1
    assert active["manufacturer"] == "contoso"
    refused(devid("hub", "remove", device["hub"], "--home", home), "devices are allocated")


def test_device_disable_activate_enable(home: Path, jitr_device: str) -> None:
    if one(devid("device", "show", jitr_device, "--home", home, "--json"))["state"] != "ACTIVE":
        ok(devid("device", "activate", jitr_device, "--home", home))  # when run without the test before
    refused(
        devid("device", "activate", jitr_device, "--home", home),
        "is ACTIVE",
        "PENDING_ACTIVATION or INACTIVE",
    )
    assert one(devid("device", "disable", jitr_device, "--home", home, "--json"))["state"] == "INACTIVE"
    inactive = json_lines(ok(devid("device", "list", "--state", "INACTIVE", "--home", home, "--json")).stdout)
    assert [d["serial"] for d in inactive] == [jitr_device]
    assert one(devid("device", "activate", jitr_device, "--home", home, "--json"))["state"] == "ACTIVE"
    shown = one(devid("device", "show", jitr_device, "--home", home, "--json"))
    assert shown["state"] == "ACTIVE" and shown["manufacturer"] == "contoso" and shown["certificates"] == []
    refused(devid("device", "list", "--hub", "mars", "--home", home), "no hub named 'mars'")
    refused(devid("device", "enable", "NOPE-1", "--home", home), "no device with serial 'NOPE-1'")
    assert count(home, "devices") == 1
