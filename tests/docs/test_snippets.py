"""Every fenced code block of README.md and docs/ runs, or says why not (the convention is in
tests/docs/markdown_blocks.py and CONTRIBUTING.md). Each case is named by file:line."""

import os
import socket
import subprocess
import sys

import pytest

from tests.docs.markdown_blocks import (
    PYTHON,
    ROOT,
    SHELL,
    blocks,
    commands,
    documents,
    problems,
    run_by,
    skip_reason,
    torch_bam_argv,
)

ALL = [b for path in documents() for b in blocks(path)]


def _runs_here(block) -> bool:
    if run_by(block):
        return False
    if block.language in SHELL:
        return any(torch_bam_argv(c) is not None for c in commands(block))
    return block.language in PYTHON


RUN = [b for b in ALL if _runs_here(b)]
_workdirs: dict = {}  # one working directory per page, shared by its blocks in page order


def test_every_fence_names_its_language_and_every_marker_is_well_formed():
    # The README's blocks are read too (its snippets are run by the tests their markers name).
    assert len(ALL) > 20 and len(RUN) > 10 and any(b.path.name == "README.md" for b in ALL)
    assert [p for b in ALL for p in problems(b)] == []


def test_blocks_run_by_a_named_test_are_run_there():
    """A ``<!-- test: NAME (tests/PATH.py ...) -->`` block: that file exists and looks the
    block up by its marker (tests.docs.markdown_blocks.block_after)."""
    marked = [(b, run_by(b)) for b in ALL if run_by(b)]
    assert marked
    for block, (name, test_file) in marked:
        path = ROOT / test_file
        assert path.is_file(), f"{block.where}: {test_file} does not exist"
        assert f"<!-- test: {name}" in path.read_text(), f"{block.where}: not run by {test_file}"


def _no_network(*args, **kwargs):
    raise OSError("a docs snippet tried to use the network: mark it <!-- docs: skip (REASON) -->")


@pytest.mark.parametrize("block", RUN, ids=[b.where for b in RUN])
def test_block_runs(block, tmp_path_factory, monkeypatch):
    reason = skip_reason(block)
    if reason is not None:
        pytest.skip(f"docs: {reason}")
    if block.path not in _workdirs:
        _workdirs[block.path] = tmp_path_factory.mktemp(block.path.stem)
    workdir = _workdirs[block.path]
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TORCH_HOME", str(workdir / ".torch_home"))  # no cached weights
    if block.language in PYTHON:
        monkeypatch.setattr(socket.socket, "connect", _no_network)
        exec(compile(block.code, block.where, "exec"), {"__name__": "__main__"})
        return
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    for command in commands(block):
        argv = torch_bam_argv(command)
        done = subprocess.run(
            [sys.executable, "-m", "torch_bam", *argv],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, PYTHONPATH=path),
        )
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
