"""The command line starts light and quiet: a command imports only what it uses (no web server,
no Alembic, no token or HSM libraries to list CAs), and no command prints a warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from e2e import devid, devid_env, ok

from devid.config import Home

#: Libraries `devid --help` and `devid ca list` have no use for: importing them costs start-up time.
#: (`ca list` prints a Rich table; help is plain.)
HEAVY = ("aiohttp", "alembic", "jwt", "cwt", "pkcs11", "psycopg", "rich")

_IMPORTED_BY = """
import sys
from devid.cli.main import run
sys.argv = ["devid", *sys.argv[1:]]
try:
    run()
except SystemExit:
    pass
heavy = {m.split(".")[0] for m in sys.modules} & set(%r)
print("HEAVY:" + ",".join(sorted(heavy)), file=sys.stderr)
"""


def _heavy_imports(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTED_BY % (HEAVY,), *args],
        capture_output=True,
        text=True,
        env=devid_env(),
        timeout=60,
        check=False,
    )
    line = next(x for x in result.stderr.splitlines() if x.startswith("HEAVY:"))
    return {name for name in line.removeprefix("HEAVY:").split(",") if name}


def test_help_and_ca_list_import_nothing_heavy(sqlite_home: Home) -> None:
    assert _heavy_imports("--help") == set()
    assert _heavy_imports("ca", "list", "--home", str(sqlite_home.path)) == {"rich"}


def test_commands_print_no_warning(sqlite_home: Home, tmp_path: Path) -> None:
    env = devid_env(PYTHONWARNINGS="default")
    for args in (
        ["--help"],
        ["--version"],
        ["ca", "list", "--home", sqlite_home.path],
        ["cert", "list", "--home", sqlite_home.path],
        ["audit", "verify", "--home", sqlite_home.path],
        ["init", "--home", tmp_path / "fresh", "--org", "Quiet"],
    ):
        result = ok(devid(*args, env=env))
        assert result.stderr == "", f"devid {' '.join(map(str, args))} wrote to stderr: {result.stderr}"


def test_version_names_the_installed_package() -> None:
    from importlib.metadata import version

    assert ok(devid("--version")).stdout.strip() == f"devid {version('devid')}"


def test_help_never_cuts_an_option_name() -> None:
    """Piped help is 80 columns: long option names wrap, never end in an ellipsis."""
    out = ok(devid("serve", "--help")).stdout
    assert "…" not in out and "--trusted-proxy" in out


def test_every_listed_command_loads_and_an_unknown_one_is_refused() -> None:
    from devid.cli.main import COMMANDS, load_command

    for name in COMMANDS:
        assert load_command(name).name == name
    refused = devid("no-such-command")
    assert refused.returncode == 2 and "No such command 'no-such-command'" in refused.stderr
