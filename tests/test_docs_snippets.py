"""Every code block of README.md and docs/*.md runs as written, as a newcomer would run it.

Each document's blocks run in order, in one fresh folder (so a block may use the files an earlier block of the
same document made), Python blocks in one namespace per document. A bash line that is a `maefast` command runs
in this process (maefast.cli.main with the words the shell would pass: the console script does exactly that),
any other line in bash. A block whose fence says more than its language is not run, and says why:
  ```bash no-run      deliberately heavy, an install, or the network (the text says what it costs)
  ```python gpu       needs a GPU (or several)
  ```text             not code (a diagram, an output)
Every other block runs, and must succeed (exit code 0, no exception).
"""
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from maefast.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
LANGUAGES = {"bash", "python", "text", "yaml", "json"}
MARKERS = {"no-run", "gpu"}
SHELL_SYNTAX = re.compile(r"[|&;<>$`]")  # a line the shell must run itself


def blocks(document: Path) -> list[tuple[str, set[str], str]]:
    """(language, markers, code) of every fenced block, in order."""
    found = []
    for info, code in FENCE.findall(document.read_text()):
        words = info.split()
        assert words, f"{document.name}: a code block without a language:\n{code[:200]}"
        found.append((words[0], set(words[1:]), code))
    return found


def runnable(language: str, markers: set[str]) -> bool:
    return language in ("bash", "python") and not markers


def shell_commands(code: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments and blank lines left out."""
    commands, pending = [], ""
    for line in code.splitlines():
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip() and not pending.lstrip().startswith("#"):
            commands.append(pending.strip())
        pending = ""
    return commands


def run_bash(code: str, folder: Path) -> None:
    for command in shell_commands(code):
        words = shlex.split(command, comments=True)
        if words and words[0] == "maefast" and not SHELL_SYNTAX.search(command.split("#")[0]):
            assert main(words[1:]) == 0, command
            continue
        result = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def test_every_block_has_a_language_and_known_markers():
    for document in DOCUMENTS:
        for language, markers, _ in blocks(document):
            assert language in LANGUAGES, f"{document.name}: unknown block language {language!r}"
            assert markers <= MARKERS, f"{document.name}: unknown markers {markers - MARKERS}"
    assert any(runnable(*block[:2]) for block in blocks(ROOT / "README.md"))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_snippet_runs_as_written(document, tmp_path, monkeypatch):
    todo = [(language, code) for language, markers, code in blocks(document) if runnable(language, markers)]
    if not todo:
        pytest.skip(f"{document.name} has no code to run")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for number, (language, code) in enumerate(todo, 1):
        try:
            if language == "python":
                exec(compile(code, f"{document.name} python block {number}", "exec"), namespace)
            else:
                run_bash(code, tmp_path)
        except BaseException as error:  # name the block: the traceback alone points into this test
            raise AssertionError(f"{document.name}, {language} block {number} failed:\n{code}") from error
