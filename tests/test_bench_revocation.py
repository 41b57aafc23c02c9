"""`devid bench revocation --quick`: every section it runs reports its figures as JSON lines with
the names and units the issue asks for (no timing asserts: figures are not tests)."""

from __future__ import annotations

import json

from e2e import devid, ok

EXPECTED = {
    "crl.build_s.1000": "s",
    "crl.bytes.1000": "B",
    "crl.build_s.5000": "s",
    "crl.bytes.5000": "B",
    "revoke.mass_s.2000": "s",
    "revoke.transaction_s.2000": "s",
    "revoke.publish_s.2000": "s",
    "revoke.ocsp_s.2000": "s",
    "filter.bytes_per_revoked.200_of_20000": "B/revoked",
    "filter.bytes_per_revoked.2000_of_20000": "B/revoked",
}


def test_quick_run_reports_named_figures_with_baselines() -> None:
    out = ok(devid("bench", "revocation", "--quick", "--json", "--only", "crl,mass,filter")).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    figures = {line["name"]: line for line in lines}
    assert {name: figures[name]["unit"] for name in EXPECTED if name in figures} == EXPECTED
    for name in ("crl.build_s.5000", "revoke.mass_s.2000", "filter.bytes_per_revoked.2000_of_20000"):
        figure = figures[name]
        assert figure["value"] > 0 and figure["baseline"] > 0 and figure["ratio"] > 0
        assert figure["baseline_name"]
    # The CRL really lists what was revoked: its DER grows with the entries.
    assert figures["crl.bytes.5000"]["value"] > 4 * figures["crl.bytes.1000"]["value"]


def test_unknown_section_is_refused() -> None:
    result = devid("bench", "revocation", "--only", "crl,bogus")
    assert result.returncode != 0
    assert "bogus" in result.stdout + result.stderr


def test_compact_section_sizes_the_cose_answer_beside_ocsp() -> None:
    out = ok(devid("bench", "revocation", "--quick", "--json", "--only", "compact")).stdout
    figures = {f["name"]: f for f in (json.loads(line) for line in out.splitlines() if line.startswith("{"))}
    assert (figures["status.cose_bytes.good"]["value"], figures["status.cose_bytes.revoked"]["value"]) == (
        113,
        119,
    )
    for name in ("status.cose_bytes.good", "status.cose_bytes.revoked"):
        assert figures[name]["baseline"] > 600 and "without the certificate" in figures[name]["note"]
    for name in ("status.cose_sign_per_s", "status.cose_cached_per_s", "status.cose_verify_per_s"):
        assert (
            figures[name]["unit"] == "answers/s"
            and figures[name]["value"] > 0
            and figures[name]["baseline"] > 0
        )
