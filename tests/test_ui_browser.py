"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright (which never
downloads a browser here). An operator logs in, sees the overview and the expiry chart, searches a
device and revokes it with the form; an auditor sees no button and a forged POST is refused;
a forged CSRF token is refused; the chart, the revocations page and the audit log show the
revocation; the operator is refused the audit log. Screenshots of every main page are saved in
$DEVID_ARTEFACTS/ui-screenshots (else under the test's tmp dir), their paths printed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ui import Served, served  # noqa: F401 - the fixture

from devid.pki.reasons import Reason
from devid.revocation.publisher import Publisher

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture
def browser() -> Iterator[object]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def _page(browser: object, served: Served) -> object:  # noqa: F811
    context = browser.new_context(  # type: ignore[attr-defined]
        base_url=served.server.url, ignore_https_errors=True, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(5000)
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(served.server.url) else outside.append(r.url))
    page.outside = outside
    return page


def _login(page: object, token: str) -> None:
    page.goto("/ui")  # type: ignore[attr-defined]
    assert page.url.endswith("/ui/login")  # type: ignore[attr-defined]
    page.fill("input[name=token]", token)  # type: ignore[attr-defined]
    page.click("form[action='/ui/login'] button")  # type: ignore[attr-defined]
    assert page.url.endswith("/ui")  # type: ignore[attr-defined]
    assert token not in page.url  # type: ignore[attr-defined]


def test_operator_revokes_auditor_cannot(browser: object, served: Served, tmp_path: Path) -> None:  # noqa: F811
    shots = Path(os.environ.get("DEVID_ARTEFACTS") or tmp_path) / "ui-screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page = _page(browser, served)
    page.goto("/ui/login")
    page.fill("input[name=token]", "devid_wrong")
    page.click("form[action='/ui/login'] button")
    assert "not valid" in page.inner_text("[role=alert]")
    page.screenshot(path=shots / "login-refused.png")

    _login(page, served.tokens["operator"])
    before = _charted(page)
    svg = page.locator("svg")
    assert svg.count() == 1 and "certificates expiring per week" in (svg.text_content() or "")
    assert "week starting" in (svg.text_content() or "")
    assert page.locator("svg rect[fill]").count() > 0
    page.screenshot(path=shots / "overview.png", full_page=True)

    page.fill("input[name=q]", "LOT-B")
    page.click("header button:has-text('Search')")
    assert page.locator("a[href^='/ui/devices/LOT-B-']").count() == 3
    page.screenshot(path=shots / "search.png", full_page=True)
    page.click("text=LOT-B-002")
    assert "ACTIVE" in page.inner_text("main")
    page.select_option("select[name=reason]", str(Reason.KEY_COMPROMISE.value))
    page.fill("input[name=note]", "stolen from the depot")
    page.check("form[action$='/revoke'] input[name=confirm]")
    page.screenshot(path=shots / "device-before.png", full_page=True)
    page.click("button.danger")
    assert "Revoked: 2 certificate(s)" in page.inner_text("main")
    assert page.locator("td", has_text="REVOKED").count() >= 1
    page.screenshot(path=shots / "device-revoked.png", full_page=True)
    assert served.state("LOT-B-002") == "REVOKED"
    # The overview lists the revocation, made by this token; the chart lost its valid LDevID.
    page.goto("/ui")
    assert "ui:operator" in page.inner_text("main")
    assert _charted(page) == before - 1
    Publisher(served.authority).publish()  # the current CRLs and filters, with their sizes
    page.click("header nav >> text=Revocations")
    assert "LOT-B-002" in page.inner_text("main") and "keyCompromise" in page.inner_text("main")
    page.screenshot(path=shots / "revocations.png", full_page=True)
    page.click("header nav >> text=Renewals")
    assert "Pending approval" in page.inner_text("main")
    page.screenshot(path=shots / "renewals.png", full_page=True)
    page.click("header nav >> text=Health")
    page.screenshot(path=shots / "health.png", full_page=True)
    # The audit log is not the operator's: refused.
    answer = page.goto("/ui/audit")
    assert answer is not None and answer.status == 403

    # A forged CSRF token in the operator's own form: refused, nothing changes.
    page.goto("/ui/devices/LOT-B-001")
    page.locator("form[action$='/revoke'] input[name=csrf]").evaluate("e => e.value = 'forged'")
    page.check("form[action$='/revoke'] input[name=confirm]")
    with page.expect_response(lambda r: r.url.endswith("/revoke")) as answer:
        page.click("button.danger")
    assert answer.value.status == 403
    assert served.state("LOT-B-001") == "ACTIVE"

    auditor = _page(browser, served)
    _login(auditor, served.tokens["auditor"])
    auditor.goto("/ui/devices/LOT-B-001")
    assert auditor.locator("button.danger").count() == 0
    auditor.screenshot(path=shots / "device-auditor.png", full_page=True)
    auditor.click("header nav >> text=Audit log")
    revocation = auditor.locator("tr", has_text="ui:operator").filter(has_text="revocation")
    assert revocation.count() == 1 and "device:LOT-B-002" in revocation.inner_text()
    auditor.click("text=Verify the whole chain now")
    assert "Whole chain verified" in auditor.inner_text("[role=status]")
    auditor.screenshot(path=shots / "audit.png", full_page=True)
    csrf = auditor.locator("input[name=csrf]").first.get_attribute("value")
    forged = auditor.request.post(
        "/ui/devices/LOT-B-001/revoke", form={"csrf": csrf, "reason": "1", "confirm": "yes"}
    )
    assert forged.status == 403
    assert served.state("LOT-B-001") == "ACTIVE"
    assert page.outside == [] and auditor.outside == []
    for shot in sorted(shots.iterdir()):
        print(f"screenshot: {shot}")


def _charted(page: object) -> int:
    """How many certificates the expiry chart's bars count (titles `profile: N expiring ...`)."""
    titles = page.locator("svg rect title").all_text_contents()  # type: ignore[attr-defined]
    return sum(int(t.split(": ")[1].split()[0].replace(",", "")) for t in titles)
