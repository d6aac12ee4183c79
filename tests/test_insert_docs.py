"""docs/adding-bam.md: its figures are what docs/scripts/placement_figures.py prints, and its
Python examples run."""

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "adding-bam.md"


def _figures_module():
    path = ROOT / "docs" / "scripts" / "placement_figures.py"
    spec = importlib.util.spec_from_file_location("placement_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pages_figures_are_what_the_script_prints():
    figures = _figures_module()
    text = PAGE.read_text()
    shown = dict(re.findall(r"<!-- figure: (\w+) -->\n```text\n(.*?)\n```", text, re.S))
    assert sorted(shown) == sorted(figures.NETWORKS)
    for name in figures.NETWORKS:
        assert shown[name] == figures.figure(name), name


def test_the_pages_python_examples_run(tmp_path, monkeypatch):
    text = PAGE.read_text()
    blocks = re.findall(r"(<!-- docs: skip[^\n]*-->\n)?```python\n(.*?)```", text, re.S)
    runnable = [code for skip, code in blocks if not skip]
    assert len(runnable) == 5 and len(blocks) == 6
    monkeypatch.chdir(tmp_path)
    for code in runnable:
        exec(compile(code, str(PAGE), "exec"), {})
