"""The `devid` command line end to end: the installed script as a subprocess, a real SQLite home,
CSRs made by the openssl CLI and every certificate checked by `openssl verify` / `x509` / `asn1parse`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e import (
    PASSPHRASE,
    count,
    db_path,
    devid,
    devid_many,
    flat,
    ok,
    openssl,
    openssl_csr,
    openssl_verify,
    query,
    split_pem,
)

from devid.est.client import EstError

HWMN_OID = "1.3.6.1.5.5.7.8.4"
HIERARCHY = {
    "root": ("root", None),
    "manufacturing": ("manufacturing", "root"),
    "operational": ("operational", "root"),
    "manufacturing-ocsp": ("ocsp-signer", "manufacturing"),
    "operational-ocsp": ("ocsp-signer", "operational"),
}


@dataclass
class Acme:
    """One home shared by this module: `devid init --home H --org Acme`, plus its trust files."""

    path: Path
    work: Path
    init: subprocess.CompletedProcess[str]
    pem: dict[str, Path] = field(default_factory=dict)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def certificates(home: Path) -> list[dict[str, object]]:
    """`devid cert list --json`, all of it."""
    return json_lines(ok(devid("cert", "list", "--home", home, "--json", "--limit", "10000")).stdout)


def subject_of(pem: Path) -> str:
    return openssl("x509", "-in", pem, "-noout", "-subject", "-nameopt", "RFC2253").strip()


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Acme:
    work = tmp_path_factory.mktemp("cli")
    home = work / "H"
    result = devid("init", "--home", home, "--org", "Acme")
    return Acme(home, work, result)


@pytest.fixture(scope="module")
def trust(acme: Acme) -> dict[str, Path]:
    """root.pem, manufacturing.pem, operational.pem from `devid ca export --pem` (root first)."""
    ok(acme.init)
    bundle = ok(devid("ca", "export", "--pem", "--home", acme.path)).stdout
    blocks = split_pem(bundle)
    assert len(blocks) == 3, bundle
    for name, block in zip(("root", "manufacturing", "operational"), blocks, strict=True):
        acme.pem[name] = acme.work / f"{name}.pem"
        acme.pem[name].write_text(block)
    return acme.pem


@pytest.fixture(scope="module")
def sn1(acme: Acme, trust: dict[str, Path]) -> Path:
    """An IDevID for SN-1 from a PEM CSR made by openssl (the CSR asks for a subject it won't get)."""
    csr = openssl_csr(acme.work, "sn1", subject="/CN=csr-chosen-name/O=Not Acme")
    out = acme.work / "cert.pem"
    result = ok(
        devid(
            "cert",
            "issue",
            "--home",
            acme.path,
            "--csr",
            csr,
            "--profile",
            "idevid",
            "--device-serial",
            "SN-1",
            "--out",
            out,
        )
    )
    assert "idevid" in result.stdout
    return out


# --- init and the hierarchy ------------------------------------------------------------------------


def test_init_creates_config_store_and_hierarchy(acme: Acme, trust: dict[str, Path]) -> None:
    out = flat(ok(acme.init).stdout)
    assert "Acme" in out
    for name in HIERARCHY:
        assert name in out
    assert (acme.path / "devid.toml").is_file()
    assert db_path(acme.path) == (acme.path / "devid.db").resolve()
    assert count(acme.path, "cas") == 5
    keys = sorted((acme.path / "keys").glob("*.key.pem"))
    assert len(keys) == 5 + 1  # the CA keys and the audit key
    assert sum(key.name.endswith("-audit.key.pem") for key in keys) == 1
    for key in keys:  # encrypted at rest, owner-only
        assert key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert key.stat().st_mode & 0o077 == 0

    listed, shown = devid_many(
        [("ca", "list", "--home", acme.path, "--json"), ("ca", "show", "manufacturing", "--home", acme.path)]
    )
    rows = {str(r["name"]): r for r in json_lines(ok(listed).stdout)}
    assert {name: (r["role"], r["parent"]) for name, r in rows.items()} == HIERARCHY
    assert rows["manufacturing"]["subject"] == "CN=Acme Manufacturing CA,O=Acme"
    assert "CN=Acme Manufacturing CA,O=Acme" in flat(ok(shown).stdout)

    # The exported bundle: root (self-signed) first, then the two intermediates, each under the root.
    assert subject_of(trust["root"]) == "subject=CN=Acme Root CA,O=Acme"
    assert subject_of(trust["manufacturing"]) == "subject=CN=Acme Manufacturing CA,O=Acme"
    assert subject_of(trust["operational"]) == "subject=CN=Acme Operational CA,O=Acme"
    for name in ("root", "manufacturing", "operational"):
        openssl_verify(trust["root"], trust[name])
        fingerprint = openssl("x509", "-in", trust[name], "-noout", "-fingerprint", "-sha256")
        assert fingerprint.split("=", 1)[1].strip().replace(":", "").lower() == rows[name]["fingerprint"]


def _snapshot(home: Path) -> dict[str, tuple[str, int]]:
    files = [home / "devid.toml", home / "devid.db", *sorted((home / "keys").iterdir())]
    return {f.name: (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns) for f in files}


def test_init_again_changes_nothing(acme: Acme, trust: dict[str, Path]) -> None:
    before, names = _snapshot(acme.path), {p.name for p in acme.path.iterdir()}
    result = devid("init", "--home", acme.path, "--org", "Someone Else")
    assert result.returncode == 2
    assert "already a devid home" in flat(result.stderr)
    assert _snapshot(acme.path) == before
    assert {p.name for p in acme.path.iterdir()} == names


def test_init_without_passphrase_refused(tmp_path: Path) -> None:
    unset, empty = tmp_path / "unset", tmp_path / "empty"
    results = devid_many(
        [("init", "--home", unset, "--org", "Acme"), ("init", "--home", empty, "--org", "Acme")],
        passphrases=[None, ""],
    )
    for home, result in zip((unset, empty), results, strict=True):
        assert result.returncode == 2, result
        assert "DEVID_PASSPHRASE" in flat(result.stderr)
        assert "Traceback" not in result.stderr
        assert not home.exists()


def test_missing_home_is_a_clear_error(tmp_path: Path) -> None:
    # A long path on purpose: the error must name it whole, whatever the terminal width.
    missing = tmp_path / "nowhere-to-be-found" / "certainly-not-a-devid-home-either"
    csr = openssl_csr(tmp_path, "csr")
    calls: list[tuple[str | Path, ...]] = [
        ("ca", "list", "--home", missing),
        ("cert", "issue", "--home", missing, "--csr", csr, "--profile", "idevid", "--device-serial", "X"),
        ("factory", "run", "--count", "1", "--home", missing),
    ]
    for call, result in zip(calls, devid_many(calls), strict=True):
        where = f"devid {' '.join(map(str, call[:2]))}: {result.stderr}"
        assert result.returncode == 2, where
        assert "no devid home" in result.stderr, where
        assert str(missing) in result.stderr, where  # the path, unbroken
        assert "Traceback" not in result.stderr, where
    assert not missing.parent.exists()


def test_text_from_users_is_printed_verbatim(tmp_path: Path) -> None:
    """Org names, paths and serials are text, never console markup (`[/x]` once crashed the CLI)."""
    home = tmp_path / "lab [/x] home"
    org = "Acme [/i] [red]Labs"
    init = ok(devid("init", "--home", home, "--org", org))
    assert repr(org) in init.stdout and str(home) in init.stdout
    csr = openssl_csr(tmp_path, "csr")
    table, show, bad = devid_many(
        [
            ("ca", "list", "--home", home),
            ("ca", "show", "root", "--home", home),
            ("cert", "issue", "--home", home, "--csr", csr, "--profile", "idevid", "--device-serial", "[/x]"),
        ]
    )
    assert "[/i]" in ok(table).stdout
    assert f"CN={org} Root CA,O={org}" in ok(show).stdout
    assert bad.returncode == 2, bad.stderr
    assert "device serial '[/x]'" in bad.stderr
    assert "Traceback" not in bad.stderr


# --- issuing from openssl CSRs ----------------------------------------------------------------------


def _san_content(cert: Path) -> str:
    """`openssl asn1parse` of the subjectAltName extension's value (parsed inside its OCTET STRING)."""
    lines = openssl("asn1parse", "-in", cert).splitlines()
    at = next(i for i, line in enumerate(lines) if "X509v3 Subject Alternative Name" in line)
    value = next(line for line in lines[at + 1 :] if "OCTET STRING" in line)
    offset = value.split(":", 1)[0].strip()
    return openssl("asn1parse", "-in", cert, "-strparse", offset)


def test_issue_idevid_from_openssl_csr(acme: Acme, trust: dict[str, Path], sn1: Path) -> None:
    openssl_verify(trust["root"], sn1, untrusted=trust["manufacturing"])
    text = openssl("x509", "-in", sn1, "-text", "-noout")
    subject = subject_of(sn1)
    assert "serialNumber=SN-1" in subject
    assert "O=Acme" in subject
    assert "csr-chosen-name" not in text and "Not Acme" not in text  # the profile decides, not the CSR
    assert "X509v3 Subject Alternative Name" in text
    san = text.split("X509v3 Subject Alternative Name", 1)[1].splitlines()[1]
    assert "othername" in san.lower(), san
    assert HWMN_OID in san or "hardware module name" in san.lower(), san
    assert "CA:FALSE" in text
    assert "Digital Signature" in text

    # hardwareModuleName ::= SEQUENCE { hwType OID, hwSerialNum OCTET STRING } inside the otherName.
    hw_type = re.search(r'hw_type = "([0-9.]+)"', (acme.path / "devid.toml").read_text())
    assert hw_type is not None
    parsed = _san_content(sn1).splitlines()
    oid = next(i for i, line in enumerate(parsed) if line.rstrip().endswith(f":{HWMN_OID}"))
    inner = [line.split("prim:", 1)[1].split() for line in parsed[oid + 1 :] if "prim:" in line]
    assert inner[0] == ["OBJECT", f":{hw_type.group(1)}"], parsed
    assert inner[1] == ["OCTET", "STRING", ":SN-1"], parsed

    assert openssl("x509", "-in", sn1, "-noout", "-enddate").strip() == "notAfter=Dec 31 23:59:59 9999 GMT"
    assert "GENERALIZEDTIME   :99991231235959Z" in openssl("asn1parse", "-in", sn1)

    # The certificate carries the CSR's key.
    key = acme.work / "sn1.key"
    assert openssl("x509", "-in", sn1, "-noout", "-pubkey") == openssl("pkey", "-in", key, "-pubout")


def test_issue_from_der_csr_to_stdout(acme: Acme, trust: dict[str, Path]) -> None:
    csr = openssl_csr(acme.work, "sn2", der=True)
    assert not csr.read_bytes().startswith(b"-----")
    result = ok(
        devid(
            "cert",
            "issue",
            "--home",
            acme.path,
            "--csr",
            csr,
            "--profile",
            "idevid",
            "--device-serial",
            "SN-2",
        )
    )
    assert result.stdout.startswith("-----BEGIN CERTIFICATE-----")
    assert len(split_pem(result.stdout)) == 1
    cert = acme.work / "sn2.pem"
    cert.write_text(result.stdout)
    openssl_verify(trust["root"], cert, untrusted=trust["manufacturing"])
    assert "serialNumber=SN-2" in subject_of(cert)
    pub = openssl("req", "-in", csr, "-inform", "DER", "-noout", "-pubkey")
    assert openssl("x509", "-in", cert, "-noout", "-pubkey") == pub


# --- refusals ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    csr: str  # name of a CSR file the fixture makes
    profile: str
    serial: str | None
    says: tuple[str, ...]
    passphrase: str = PASSPHRASE


REFUSALS = {
    "rsa-key": Refusal("rsa", "idevid", "SN-RSA", ("RSA",)),
    "p384-key": Refusal("p384", "idevid", "SN-P384", ("secp384r1",)),
    "bad-signature": Refusal("badsig", "idevid", "SN-BADSIG", ("signature does not verify",)),
    "random-bytes": Refusal("random", "idevid", "SN-RANDOM", ("not a valid PKCS#10 CSR",)),
    "trailing-junk": Refusal("junk", "idevid", "SN-JUNK", ("unexpected data after",)),
    "over-16KiB": Refusal("big", "idevid", "SN-BIG", ("limit is 16384",)),
    "asks-for-ca": Refusal("ca", "idevid", "SN-CA", ("CA certificate", "cA=true")),
    "duplicate-serial": Refusal("good", "idevid", "SN-1", ("'SN-1' already exists",)),
    "unknown-profile": Refusal("good", "root-ca", "SN-ROOT", ("'root-ca'", "cannot be issued")),
    "ldevid-unknown-device": Refusal("good", "ldevid", "SN-NOBODY", ("no device with serial 'SN-NOBODY'",)),
    "bad-serial-syntax": Refusal("good", "idevid", "../../etc", ("'../../etc'", "letters, digits")),
    "wrong-passphrase": Refusal(
        "good", "idevid", "SN-WRONGPASS", ("wrong passphrase",), "not the passphrase"
    ),
}


@dataclass
class Refusals:
    home: Path
    results: dict[str, subprocess.CompletedProcess[str]]
    listed_before: list[dict[str, object]]
    listed_after: list[dict[str, object]]
    devices_before: int
    devices_after: int


def _make_refusal_csrs(work: Path) -> dict[str, Path]:
    d = work / "refusals"
    d.mkdir()
    good = openssl_csr(d, "good")
    csrs = {
        "good": good,
        "rsa": openssl_csr(d, "rsa", newkey=("-newkey", "rsa:2048")),
        "p384": openssl_csr(d, "p384", newkey=("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384")),
        "ca": openssl_csr(d, "ca", extra=("-addext", "basicConstraints=critical,CA:TRUE")),
    }
    der = bytearray(openssl_csr(d, "tosign", der=True).read_bytes())
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s: still DER, no longer valid
    csrs["badsig"] = d / "badsig.der"
    csrs["badsig"].write_bytes(bytes(der))
    csrs["random"] = d / "random.bin"
    csrs["random"].write_bytes(os.urandom(700))
    csrs["junk"] = d / "junk.csr"
    csrs["junk"].write_bytes(good.read_bytes() + b"this is not part of any PEM block\n")
    csrs["big"] = d / "big.csr"
    csrs["big"].write_bytes(good.read_bytes() + b"\n" * (16 * 1024))
    assert csrs["big"].stat().st_size > 16 * 1024
    return csrs


@pytest.fixture(scope="module")
def refusals(acme: Acme, sn1: Path) -> Refusals:
    """Every refusal case against the shared home, concurrently; the store before and after."""
    csrs = _make_refusal_csrs(acme.work)
    listed_before, devices_before = certificates(acme.path), count(acme.path, "devices")
    calls = {
        case: (
            "cert",
            "issue",
            "--home",
            acme.path,
            "--csr",
            csrs[r.csr],
            "--profile",
            r.profile,
            *(("--device-serial", r.serial) if r.serial else ()),
        )
        for case, r in REFUSALS.items()
    }
    done = devid_many(list(calls.values()), passphrases=[r.passphrase for r in REFUSALS.values()])
    results = dict(zip(calls, done, strict=True))
    return Refusals(
        acme.path,
        results,
        listed_before,
        certificates(acme.path),
        devices_before,
        count(acme.path, "devices"),
    )


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal(refusals: Refusals, case: str) -> None:
    r = REFUSALS[case]
    result = refusals.results[case]
    err = flat(result.stderr)
    assert result.returncode == 2, f"{result.returncode}: {result.stdout}{result.stderr}"
    for phrase in r.says:
        assert phrase in err, err
    assert err.startswith("error:"), err
    assert "Traceback" not in result.stderr
    assert "BEGIN CERTIFICATE" not in result.stdout
    # Nothing issued, no device registered, by this case or any other.
    assert refusals.listed_after == refusals.listed_before
    assert refusals.devices_after == refusals.devices_before
    if r.serial and r.serial != "SN-1":
        assert query(refusals.home, "SELECT id FROM devices WHERE serial = ?", r.serial) == []


def test_refusals_are_audited(refusals: Refusals) -> None:
    """Each refusal that reached the authority left one `refused` audit event naming its reason."""
    rows = query(refusals.home, "SELECT subject, detail FROM audit_events WHERE outcome = 'refused'")
    reasons = {str(subject): json.loads(str(detail))["code"] for subject, detail in rows}
    assert reasons.get("SN-RSA") == "key-type"
    assert reasons.get("SN-P384") == "key-curve"
    assert reasons.get("SN-1") == "duplicate-device"
    assert reasons.get("SN-WRONGPASS") == "wrong-passphrase"


# --- show and list ------------------------------------------------------------------------------------


def test_cert_show_and_list_filters(acme: Acme, sn1: Path) -> None:
    serial = openssl("x509", "-in", sn1, "-noout", "-serial").strip().removeprefix("serial=")
    assert serial == serial.upper()  # openssl prints upper-case hex (zero-padded); devid must take it
    canonical = format(int(serial, 16), "x")  # devid's form: lower-case, no leading zeros
    ldevid_csr = openssl_csr(acme.work, "sn1-ldevid")
    ldevid = ok(
        devid(
            "cert",
            "issue",
            "--home",
            acme.path,
            "--csr",
            ldevid_csr,
            "--profile",
            "ldevid",
            "--device-serial",
            "SN-1",
        )
    ).stdout
    assert "BEGIN CERTIFICATE" in ldevid

    show, by_device, by_profile = devid_many(
        [
            ("cert", "show", serial, "--home", acme.path),
            ("cert", "list", "--device", "SN-1", "--json", "--home", acme.path),
            ("cert", "list", "--profile", "idevid", "--json", "--home", acme.path),
        ]
    )
    text = flat(ok(show).stdout)
    assert re.search(r"serial " + canonical + " ", text), text
    assert re.search(r"device SN-1 ", text), text
    assert re.search(r"profile idevid ", text), text
    assert re.search(r"hardware_module_names [0-9.]+:SN-1$", text), text

    rows = json_lines(ok(by_device).stdout)
    assert {r["device_serial"] for r in rows} == {"SN-1"}
    assert sorted((str(r["profile"]), str(r["issuer_name"])) for r in rows) == [
        ("idevid", "manufacturing"),
        ("ldevid", "operational"),
    ]
    assert canonical in {r["serial"] for r in rows}

    idevids = json_lines(ok(by_profile).stdout)
    assert {r["profile"] for r in idevids} == {"idevid"}
    assert "SN-1" in {r["device_serial"] for r in idevids}


def test_table_serials_copy_into_cert_show(acme: Acme, sn1: Path) -> None:
    """Piped (80 columns), tables print serials and names whole: each pastes into `cert show`."""
    listing, cas = devid_many([("cert", "list", "--home", acme.path), ("ca", "list", "--home", acme.path)])
    stored = {str(r["serial"]) for r in certificates(acme.path)}
    printed = set(re.findall(r"\b[0-9a-f]{30,}\b", ok(listing).stdout))
    assert stored and printed == stored, ok(listing).stdout
    ca_serials = set(re.findall(r"\b[0-9a-f]{30,}\b", ok(cas).stdout))
    assert len(ca_serials) == len(HIERARCHY), cas.stdout
    assert all(name in cas.stdout for name in HIERARCHY)
    shows = devid_many([("cert", "show", serial, "--home", acme.path) for serial in sorted(printed)[:3]])
    for serial, show in zip(sorted(printed)[:3], shows, strict=True):
        assert re.search(rf"serial {serial} ", flat(ok(show).stdout)), show.stdout


def test_cert_show_json_is_structured(acme: Acme, sn1: Path) -> None:
    serial = format(int(openssl("x509", "-in", sn1, "-noout", "-serial").strip().split("=")[1], 16), "x")
    info = json_lines(ok(devid("cert", "show", serial, "--json", "--home", acme.path)).stdout)[0]
    names = info["hardware_module_names"]
    assert isinstance(names, list) and len(names) == 1 and str(names[0]).endswith(":SN-1")
    assert info["serial"] == serial and info["device"] == "SN-1"


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The `error:` line of stderr (whitespace collapsed), from its start to the end of stderr."""
    return flat(result.stderr[result.stderr.rindex("error:") :]) if "error:" in result.stderr else ""


def test_file_arguments_are_bounded_regular_files(acme: Acme, tmp_path: Path) -> None:
    """`--csr /dev/zero` once grew to gigabytes; a FIFO with no writer hung. Both, a directory and a
    file over 1 MiB are refused at once, before any key is opened, with one code each."""
    fifo = tmp_path / "csr.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.csr"
    big.write_bytes(b"0" * ((1 << 20) + 1))
    cases = {"/dev/zero": "file-not-regular", fifo: "file-not-regular", tmp_path: "file-not-regular"}
    cases[big] = "file-too-large"
    cases[tmp_path / "missing.csr"] = "file-unreadable"
    calls = [
        (
            "cert",
            "issue",
            "--home",
            acme.path,
            "--csr",
            path,
            "--profile",
            "idevid",
            "--device-serial",
            "SN-F",
        )
        for path in cases
    ]
    for (path, code), result in zip(cases.items(), devid_many(calls), strict=True):
        assert result.returncode == 2, result
        assert f"CSR file {path}" in error_line(result), result.stderr
        assert error_line(result).endswith(f"[{code}]"), result.stderr
    assert not [r for r in certificates(acme.path) if r["device_serial"] == "SN-F"]


def test_home_naming_a_file_is_a_clean_error(tmp_path: Path) -> None:
    calls: list[tuple[str | Path, ...]] = [
        ("ca", "list", "--home", "/etc/passwd"),
        ("init", "--home", "/etc/passwd", "--org", "Acme"),
        ("audit", "verify", "--home", "/etc/passwd"),
    ]
    for result in devid_many(calls):
        assert result.returncode == 2, result
        assert error_line(result) == "error: devid home /etc/passwd is not a directory [home-not-a-directory]"
        assert "Traceback" not in result.stderr


def test_est_refusal_keeps_the_servers_code_alone() -> None:
    """A refusal from devid's EST server (`message [code]`) once printed as `... [code] [est-403]`."""
    refused = EstError(403, "device SN-1 is INACTIVE [device-inactive]\n")
    assert refused.code == "device-inactive" and refused.status == 403
    assert refused.message == "the EST server refused (403): device SN-1 is INACTIVE"
    assert EstError(502, "Bad Gateway").code == "est-502"


def test_errors_print_one_stable_code(acme: Acme, tmp_path: Path) -> None:
    """Every error is `error: <message> [<code>]` with one kebab-case code (once `[CA certificate-file]`)."""
    missing = tmp_path / "missing.pem"
    calls: list[tuple[str | Path, ...]] = [
        (
            "manufacturer",
            "register",
            "m",
            "--ca-cert",
            missing,
            "--verification-cert",
            missing,
            "--home",
            acme.path,
        ),
        ("token", "verify", "x", "--audience", "a", "--jwks", missing),
        ("cert", "show", "abc123", "--home", acme.path),
        ("device", "show", "NOPE", "--home", acme.path),
        ("cert", "issue", "--home", acme.path, "--csr", missing, "--profile", "bogus"),
    ]
    for call, result in zip(calls, devid_many(calls), strict=True):
        err = error_line(result)
        assert result.returncode == 2, (call, result)
        assert re.fullmatch(r"error: [^\[]*(\S.*\S)? \[[a-z0-9]+(-[a-z0-9]+)*\]", err), (call, err)
        assert len(re.findall(r"\[[a-z0-9-]+\]$|\[[A-Za-z ]+-file\]", err)) == 1, (call, err)


# --- audit --------------------------------------------------------------------------------------------


def test_audit_verify_after_activity(acme: Acme, refusals: Refusals) -> None:
    result = ok(devid("audit", "verify", "--home", acme.path))
    events = count(acme.path, "audit_events")
    assert events > 5 + len(REFUSALS)  # init, issues and refusals all left events
    assert f"audit chain intact: {events} events verified" in flat(result.stdout)


def test_audit_verify_names_a_tampered_event(acme: Acme) -> None:
    """Tamper with the shared home's log: the module's last test that uses it."""
    ok(acme.init)
    conn = sqlite3.connect(db_path(acme.path))
    with conn:
        changed = conn.execute(
            "UPDATE audit_events SET detail = ? WHERE seq = 3", ('{"role":"root","forged":true}',)
        ).rowcount
    conn.close()
    assert changed == 1
    result = devid("audit", "verify", "--home", acme.path)
    assert result.returncode == 2
    err = flat(result.stderr)
    assert "audit chain broken at event 3" in err, err
    assert "2 events verified before it" in err


# --- bench --------------------------------------------------------------------------------------------


def test_bench_issue_json(tmp_path: Path) -> None:
    result = ok(devid("bench", "issue", "--n", "200", "--json", cwd=tmp_path))
    figures = json_lines(result.stdout)
    assert figures
    for figure in figures:
        assert {"name", "value", "unit", "baseline", "ratio"} <= figure.keys(), figure
        assert isinstance(figure["value"], float | int) and figure["value"] > 0
        assert isinstance(figure["name"], str) and isinstance(figure["unit"], str)
    assert list(tmp_path.iterdir()) == []  # its temporary home is gone, nothing left in the cwd


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bench_est_json(tmp_path: Path, workers: str) -> None:
    result = ok(
        devid(
            "bench", "est", "--n", "20", "--clients", "2", "--server-workers", workers, "--json", cwd=tmp_path
        )
    )
    figures = {f["name"]: f for f in json_lines(result.stdout)}
    for mode in ("fresh", "keep-alive"):
        rate = figures[f"est.enroll_rate_{mode}"]
        assert {"name", "value", "unit", "baseline", "ratio"} <= rate.keys(), rate
        assert rate["value"] > 0 and rate["unit"] == "enrollments/s"
        assert ", 0 failures" in str(rate["note"])
        for name in ("enroll_p50", "enroll_p99", "server_cpu", "client_cpu"):
            assert figures[f"est.{name}_{mode}"]["value"] > 0
    assert list(tmp_path.iterdir()) == []


def test_bench_onboard_json(tmp_path: Path) -> None:
    args = ("bench", "onboard", "--n", "60", "--clients", "4", "--skew-devices", "2000", "--hubs", "4")
    figures = {f["name"]: f for f in json_lines(ok(devid(*args, "--json", cwd=tmp_path)).stdout)}
    rate = figures["onboard.devices_per_s"]
    assert rate["value"] > 0 and rate["baseline"] > 0 and rate["unit"] == "devices/s"
    assert "0 failures" in str(rate["note"]) and "registered and allocated" in str(rate["note"])
    assert 1.0 <= figures["onboard.hashed_skew"]["value"] < 1.3
    # Rendezvous hashing moves about 1/5 of the devices when a 5th hub joins; hash mod n about 4/5.
    moved = figures["onboard.hashed_moved_share"]
    assert 0.12 < moved["value"] < 0.28 and moved["baseline"] > 0.6
    assert list(tmp_path.iterdir()) == []
