"""The command lines the documentation shows still parse: every ``mrisr ...`` line of a code
block in README.md and docs/*.md goes through the real argument parser (options, choices,
required arguments), so a renamed option fails here, not for a reader."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO
from mrisr.cli import build_parser

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def command_lines(path: Path) -> list[str]:
    """``mrisr`` commands in the file's fenced code blocks, continuation lines joined and
    trailing comments dropped."""
    lines, inside, pending = [], False, ""
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        text = pending + raw.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        text = re.split(r"\s+#\s", text)[0].strip()
        if text.startswith("mrisr ") or text.startswith(".venv/bin/mrisr "):
            lines.append(text)
    return lines


CASES = [(path.name, line) for path in DOCS for line in command_lines(path)]


def test_the_docs_show_commands():
    files = {name for name, _ in CASES}
    assert {"README.md", "cli.md"} <= files and len(CASES) >= 10


@pytest.mark.parametrize("source,line", CASES, ids=[f"{n}:{i}" for i, (n, _) in enumerate(CASES)])
def test_documented_command_parses(source, line):
    args = shlex.split(line)[1:]
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as exc:  # argparse exits 2 with a usage message
        pytest.fail(f"{source}: `{line}` does not parse (exit {exc.code})")
    assert parsed.command is not None
