"""docs/compliance.md cannot rot silently: every test it cites exists, every `devid ...` command
and option it cites is registered, every covered or partly row cites evidence, and the summary's
counts are the tables' counts."""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer.main

from devid.cli.main import COMMANDS, app, load_command

TESTS = Path(__file__).parent
DOC = TESTS.parent / "docs" / "compliance.md"
STATUSES = ("covered", "partly", "not covered")

CITED_TEST = re.compile(r"tests/(test_\w+\.py)(?:::(\w+))?")
CITED_COMMAND = re.compile(r"`(devid(?: [^`]*)?)`")
#: A table row whose third cell is a status: | id | subject | status | what | evidence |
ROW = re.compile(
    r"^\| (?P<id>[^|]+?) \| [^|]+ \| (?P<status>covered|partly|not covered) \| .* "
    r"\| (?P<evidence>[^|]+) \|$"
)
SUMMARY = {
    "ETSI EN 303 645": re.compile(
        r"^ETSI EN 303 645 \((\d+) provisions[^)]*\): covered (\d+), partly (\d+), not covered (\d+)\.$", re.M
    ),
    "IEC 62443-4-2": re.compile(
        r"^IEC 62443-4-2 \((\d+) requirements[^)]*\): covered (\d+), partly (\d+), not covered (\d+)\.$", re.M
    ),
}


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def section(text: str, title: str) -> str:
    """The text under the level-2 heading `title`, up to the next level-2 heading."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def rows(text: str) -> list[re.Match[str]]:
    return [m for line in text.splitlines() if (m := ROW.match(line))]


@cache
def defined_tests(file_name: str) -> frozenset[str]:
    path = TESTS / file_name
    assert path.is_file(), f"docs/compliance.md cites {file_name}, which is not in tests/"
    source = path.read_text(encoding="utf-8")
    return frozenset(re.findall(r"^\s*(?:async\s+)?def (test_\w+)\(", source, re.M))


def test_every_cited_test_exists() -> None:
    cited = CITED_TEST.findall(doc_text())
    assert len(cited) > 50
    missing = [f"{f}::{name}" for f, name in cited if name and name not in defined_tests(f)]
    assert not missing, f"docs/compliance.md cites tests that do not exist: {missing}"


def _options(command: Any) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        names.update(getattr(param, "opts", ()), getattr(param, "secondary_opts", ()))
    return names


def _resolve(words: list[str]) -> Any:
    """The command `devid <words>` runs: subcommands are followed down the groups; the first word
    that is neither an option nor a subcommand of a group ends the path (an argument)."""
    command: Any = typer.main.get_command(app)
    for depth, word in enumerate(words):
        if word.startswith("-") or not hasattr(command, "commands"):
            break
        if depth == 0:
            assert word in COMMANDS, f"`devid {word}` is not a devid command"
            command = load_command(word)
        else:
            assert word in command.commands, f"`devid {' '.join(words[: depth + 1])}` is not a command"
            command = command.commands[word]
    return command


def test_every_cited_command_and_option_exists() -> None:
    cited = sorted(set(CITED_COMMAND.findall(doc_text())))
    assert len(cited) > 20
    for line in cited:
        words = line.split()[1:]
        command = _resolve(words)
        options = {word.split("=")[0] for word in words if word.startswith("-")}
        unknown = options - _options(command)
        assert not unknown, f"`{line}`: no such option {sorted(unknown)}"


@pytest.mark.parametrize("standard", sorted(SUMMARY))
def test_summary_counts_are_the_tables_counts(standard: str) -> None:
    text = doc_text()
    table = rows(section(text, standard))
    counts = Counter(m["status"] for m in table)
    ids = [m["id"] for m in table]
    assert len(ids) == len(set(ids)), f"{standard}: a requirement is listed twice"
    summary = SUMMARY[standard].search(text)
    assert summary, f"no summary line for {standard}"
    total, *by_status = (int(n) for n in summary.groups())
    assert (total, *by_status) == (len(table), *(counts[s] for s in STATUSES))


def test_covered_and_partly_rows_cite_evidence() -> None:
    text = doc_text()
    bare = [
        m["id"]
        for standard in SUMMARY
        for m in rows(section(text, standard))
        if m["status"] != "not covered"
        and not (CITED_TEST.search(m["evidence"]) or CITED_COMMAND.search(m["evidence"]))
    ]
    assert not bare, f"rows that claim something without evidence: {bare}"
