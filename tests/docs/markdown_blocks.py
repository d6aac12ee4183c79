"""The fenced code blocks of the README and the guide, and what each one's marker says.

The convention (CONTRIBUTING.md, "Documentation"):

- a ```python block is run: exec'd in a fresh namespace;
- a ```bash (or ```sh / ```shell) block whose commands all start with ``torch-bam`` is run,
  each command as a subprocess that must exit with status 0; a shell block with no
  ``torch-bam`` command (an install line, a launcher) is shown, not run; one that mixes the two
  is an error;
- every other language (```text, ```yaml, ...) is shown, not run; a fence must name one;
- ``<!-- docs: skip (REASON) -->`` on the nearest non-blank line above a fence: not run, and
  REASON must say why (needs a GPU, ImageNet, a download, ...);
- ``<!-- test: NAME (tests/PATH.py ...) -->`` there instead: the named test file runs the block
  itself (it finds it with :func:`block_after`), so it is not run again here.

The blocks of one page run in page order in one temporary working directory, so a block may use
the files an earlier block of its page wrote (an image folder, then ``torch-bam fit`` on it).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = {"python", "py", "python3"}
SHELL = {"bash", "sh", "shell"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_SKIP = re.compile(r"^\s*<!-- docs: skip \((?P<reason>.*)\) -->\s*$")
_TEST = re.compile(
    r"^\s*<!-- test: (?P<name>[^(]+?) \((?P<file>tests/[\w/.-]+\.py)\b[^)]*\) -->\s*$"
)


@dataclass(frozen=True)
class Block:
    path: Path  # the Markdown file
    line: int  # the opening fence's line, 1-based
    language: str  # the fence's first word, "" if none
    code: str  # the block's text, dedented by the fence's indentation
    marker: str  # the nearest non-blank line above the fence

    @property
    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


def documents() -> list[Path]:
    """README.md and every page of the guide, in a fixed order."""
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or (m["fence"][0] == "`" and "`" in m["info"]):
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        end = i + 1
        while end < len(lines) and not re.match(
            rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]
        ):
            end += 1
        if end == len(lines):
            where = Block(path, i + 1, "", "", "").where
            raise ValueError(f"{where}: a code fence that never closes")
        body = [
            ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : end]
        ]
        above = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        words = m["info"].strip().lstrip("{.").split()
        language = words[0].rstrip("}").lower() if words else ""
        found.append(Block(path, i + 1, language, "\n".join(body) + "\n", above))
        i = end + 1
    return found


def skip_reason(block: Block) -> str | None:
    """The reason of a ``<!-- docs: skip (REASON) -->`` marker, or None if there is none."""
    m = _SKIP.match(block.marker)
    return m["reason"].strip() if m else None


def run_by(block: Block) -> tuple[str, str] | None:
    """(NAME, tests/PATH.py) of a ``<!-- test: NAME (tests/PATH.py ...) -->`` marker."""
    m = _TEST.match(block.marker)
    return (m["name"], m["file"]) if m else None


def commands(block: Block) -> list[str]:
    """The shell block's commands: continuation lines joined, comments and blank lines out."""
    joined, current = [], ""
    for line in block.code.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.lstrip().startswith("#"):
            joined.append(current.strip())
        current = ""
    return joined


def torch_bam_argv(command: str) -> list[str] | None:
    """The arguments after ``torch-bam``, or None if the command is not a torch-bam one."""
    words = shlex.split(command, comments=True)
    return words[1:] if words and words[0] == "torch-bam" else None


def problems(block: Block) -> list[str]:
    """What breaks the convention in ``block``: no language, a malformed marker, a skip without
    a reason, a shell block that mixes torch-bam commands and others."""
    found = []
    if not block.language:
        found.append(f"{block.where}: name the fence's language (```text for output)")
    reason, marked = skip_reason(block), run_by(block)
    if ("<!-- docs:" in block.marker or "<!-- test:" in block.marker) and not (
        reason is not None or marked
    ):
        found.append(f"{block.where}: malformed marker {block.marker.strip()!r}")
    if reason == "":
        found.append(f"{block.where}: a skip marker must give its reason")
    if block.language in SHELL and reason is None and not marked:
        argvs = [torch_bam_argv(c) for c in commands(block)]
        if any(a is None for a in argvs) and any(a is not None for a in argvs):
            found.append(
                f"{block.where}: a shell block mixes torch-bam commands and others: split it, "
                "or mark it <!-- docs: skip (REASON) -->"
            )
    return found


def block_after(marker: str) -> str:
    """The code of the one block right after ``marker`` in the README or the guide (for a test
    that runs a block marked ``<!-- test: NAME (tests/PATH.py) -->`` itself)."""
    hits = [b for p in documents() for b in blocks(p) if b.marker.strip().startswith(marker)]
    assert len(hits) == 1, f"{len(hits)} blocks after {marker!r} in README.md and docs/"
    return hits[0].code
