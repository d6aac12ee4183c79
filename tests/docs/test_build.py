"""The guide builds with warnings as errors (broken links, missing anchors, API references that
do not resolve), its CLI reference is generated from the parsers, and the README's links land."""

import argparse
import html
import os
import re
import subprocess
import sys

import pytest

from tests.docs.markdown_blocks import ROOT

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=path),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_guide_builds_strict_with_every_page(site):
    nav = re.findall(r":\s+([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert len(nav) >= 14
    for page in nav:
        built = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert built.is_file(), page
    api = (site / "api" / "index.html").read_text()
    assert "fold_bam" in api and "record_attention" in api and "channel_logits" in api


def test_the_cli_reference_has_every_command_and_option(site):
    from torch_bam.cli import _LIGHTNING, build_parser

    page = html.unescape((site / "cli" / "index.html").read_text())
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(sub.choices) >= 8
    for name, parser in sub.choices.items():
        assert f"torch-bam {name}" in page, name
        section = page[page.index(f'id="torch-bam-{name}"') :]
        for action in parser._actions:
            for option in action.option_strings:
                assert option in section, f"torch-bam {name} {option}"
    for name in _LIGHTNING:  # LightningCLI's own help, as `torch-bam fit --help` prints it
        section = page[page.index(f'id="torch-bam-{name}"') :]
        assert "--trainer.max_epochs" in section and "--model.model" in section, name


def test_the_readme_links_land():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", text)
    assert any(link.startswith("docs/") for link in links)
    assert [link for link in links if not (ROOT / link).exists()] == []
