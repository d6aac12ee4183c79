"""The README's snippets that print something run as written and print what their comments say
(the blocks marked ``<!-- test: readme ... (tests/docs/test_readme.py ...) -->``)."""

import pytest

from tests.docs.markdown_blocks import ROOT, block_after


def test_readme_usage_snippet_prints_what_it_says(capsys):
    exec(block_after("<!-- test: readme usage"), {})
    assert capsys.readouterr().out.strip() == "torch.Size([2, 1, 32, 32])"


def test_readme_add_bam_snippet_prints_what_it_says(capsys):
    pytest.importorskip("torchvision")
    # As written but for the weights: the tests never download, and add_bam does not care.
    code = block_after("<!-- test: readme add_bam")
    assert code.count('weights="DEFAULT"') == 1
    exec(code.replace('weights="DEFAULT"', "weights=None"), {})
    out = capsys.readouterr().out
    comment = code[code.index("# after ") :]
    for path, size in (("layer1", "56x56"), ("layer2", "28x28"), ("layer3", "14x14")):
        assert path in comment and size in comment
        (row,) = [line for line in out.splitlines() if line.startswith(path)]
        assert size in row


def test_readme_is_short_and_keeps_the_ci_test_command():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 160
    marker = "<!-- ci: test command (.ci/run runs the next line) -->\n```bash\n"
    command = text[text.index(marker) + len(marker) :].splitlines()[0]
    assert 'pip install -e ".[test]"' in command and command.endswith("python -m pytest -q")


def test_readme_compare_table_is_the_default_run_of_docs_compare():
    # Both are pasted from one default run's report.md; a rerun must update both.
    marker = "<!-- compare: default run"
    readme = (ROOT / "README.md").read_text()
    rows = readme[readme.index(marker) :].split("\n\n")[0].splitlines()[1:]
    assert rows[0].startswith("| variant | test error") and len(rows) == 2 + 7
    page = (ROOT / "docs" / "compare.md").read_text()
    run = page[page.index("## A default run") :]
    assert "\n".join(rows) in run
