"""The CLI reference page, generated from the parsers so that it cannot drift from them.

mkdocs runs this file as a hook (mkdocs.yml: ``hooks``): the site's ``cli.md`` is made at build
time and never stored. Every subcommand of ``torch_bam.cli.build_parser()`` gets its ``--help``; the
Lightning commands (fit, validate, test) get the ``--help`` LightningCLI prints for them.

    python scripts/cli_reference.py     # print the page
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # document this checkout, not whatever torch_bam is installed

WIDTH = "100"  # argparse wraps at $COLUMNS: a fixed width gives the same page on every machine

INTRO = """# Command line reference

Generated from the command's parsers when the guide is built (`scripts/cli_reference.py`), so
every option and default below is the code's. `torch-bam --help` and `torch-bam COMMAND --help`
print the same. Bad input to any command ends with one line on stderr naming the cause and the
fix, and exit status 2.
"""


def _subcommands() -> tuple[dict[str, argparse.ArgumentParser], dict[str, str]]:
    """Each subcommand's parser, and its one-line help."""
    from torch_bam.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices), {a.dest: a.help for a in sub._choices_actions}


def _lightning_help(command: str) -> str:
    from torch_bam.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([command, "--help"])
    return out.getvalue()


def render() -> str:
    from torch_bam.cli import _LIGHTNING

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parsers, helps = _subcommands()
        parts = [INTRO, "| command | what it does |", "| --- | --- |"]
        parts += [f"| [`{name}`](#torch-bam-{name}) | {helps[name]} |" for name in parsers]
        for name, parser in parsers.items():
            text = _lightning_help(name) if name in _LIGHTNING else parser.format_help()
            if not text.strip():
                raise RuntimeError(f"torch-bam {name} --help printed nothing")
            summary = helps[name][:1].upper() + helps[name][1:] + "."
            parts += ["", f"## torch-bam {name}", "", summary, "", "```text", text.rstrip(), "```"]
        return "\n".join(parts) + "\n"
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def on_files(files, config):
    """mkdocs hook: ``cli.md`` in the site is the generated page (docs/cli.md on disk only says
    where it comes from, so that links to it work in a plain checkout too)."""
    from mkdocs.structure.files import File

    stub = files.get_file_from_path("cli.md")
    if stub is not None:
        files.remove(stub)
    files.append(File.generated(config, "cli.md", content=render()))
    return files


if __name__ == "__main__":
    sys.stdout.write(render())
