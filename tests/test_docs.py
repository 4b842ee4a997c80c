"""The documentation: the site builds strictly with every generated part filled from the catalog, the results JSON
and the CLI, renders in a real browser, every command it shows parses, and the user docs stay free of issue numbers;
the README stays short."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from tiny import open_in_chromium
from typer._click.core import Context
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from tunelab.cli import app
from tunelab.strategies.catalog import CATALOG

ROOT = Path(__file__).resolve().parents[1]
USER_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(folder)],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_every_page_is_built_with_its_generated_parts_filled(site: Path):
    pages = {path.relative_to(site).as_posix(): path.read_text(encoding="utf-8") for path in site.rglob("*.html")}
    assert {"index.html", "results/index.html", "reference/cli/index.html", "reference/api/index.html",
            "guide/strategies/index.html"} <= set(pages)
    assert not [name for name, html in pages.items() if "{{ " in html]
    strategies = pages["guide/strategies/index.html"]
    assert all(f"<code>{name}</code>" in strategies and row.summary in strategies for name, row in CATALOG.items())
    assert "<code>tunelab rlhf pipeline</code>" in pages["reference/cli/index.html"]
    assert "check_serves_task" in pages["reference/api/index.html"]  # from the docstrings


def test_the_results_page_shows_the_figures_of_the_json(site: Path):
    page = (site / "results" / "index.html").read_text(encoding="utf-8")
    accuracy = json.loads((ROOT / "benchmarks/results/strategy_accuracy.json").read_text())["summary"]
    assert all(f"{row['accuracy']:.3f}" in page for row in accuracy.values())
    assert all(path.stem in page for path in (ROOT / "benchmarks/results").glob("*.json")
               if not path.name.endswith(".quick.json"))  # smoke tests' figures mean nothing; never shown


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
@pytest.mark.parametrize("page", ["index.html", "results/index.html", "reference/cli/index.html"])
def test_the_site_renders_in_headless_chromium_without_console_errors(site: Path, page: str, tmp_path: Path):
    dom, console, colours = open_in_chromium(site / page, tmp_path)
    assert "<table" in dom and console == []
    assert colours > 100  # text and tables drew, not a blank page


def test_user_docs_name_no_issue_numbers():
    mentions = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in USER_DOCS
                for match in re.finditer(r"\bissues? #?\d+", path.read_text(encoding="utf-8"), re.IGNORECASE)]
    assert mentions == []


def documented_commands() -> list[tuple[str, str]]:
    """(file, line) of every `tunelab` command in the user docs' code blocks, continuation lines joined; lines with
    `...` stand for a command in part and are left out."""
    lines = []
    for path in USER_DOCS:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL):
            lines += [(path.name, line.strip()) for line in block.replace("\\\n", " ").splitlines()
                      if line.strip().startswith("tunelab ") and "..." not in line]
    return lines


def test_every_documented_command_parses():
    """Each command a reader may copy names a real subcommand with real options and every required one: parsed by
    the CLI itself, not run."""
    command, commands, refused = typer.main.get_command(app), documented_commands(), []
    for source, line in commands:
        words, context, current = shlex.split(line, comments=True)[1:], None, command
        try:
            while isinstance(current, TyperGroup) and words and not words[0].startswith("-"):
                context = Context(current, info_name=words[0], parent=context)
                current, words = current.get_command(context, words[0]), words[1:]
                assert current is not None, f"{source}: no such command: {line}"
            current.make_context(current.name, words, parent=context)
        except ClickException as error:
            refused.append(f"{source}: {line} -> {error.format_message()}")
    assert len(commands) > 100 and refused == []


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 200
    assert "| `lora` |" in readme and "make demo" in readme and "make test" in readme
