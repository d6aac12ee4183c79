"""The docs convention's parser finds what it must, and its checks fail where they should."""

from tests.docs.markdown_blocks import (
    blocks,
    commands,
    problems,
    run_by,
    skip_reason,
    torch_bam_argv,
)

PAGE = """# A page

```python
print("run")
```

- a list item:

  ```bash
  torch-bam example \\
    --steps 5   # a comment
  ```

<!-- docs: skip (needs a GPU) -->
```bash
torch-bam fit --trainer.accelerator gpu
```

<!-- docs: skip () -->
```python
x = 1
```

<!-- test: my block (tests/test_x.py runs it) -->
```python
y = 2
```

<!-- docs: skipped because -->
```python
z = 3
```

```
no language
```

```bash
pip install torch-bam
torch-bam example
```

````text
```python
not a block of its own
```
````
"""


def _page(tmp_path):
    path = tmp_path / "page.md"
    path.write_text(PAGE)
    return blocks(path)


def test_blocks_languages_lines_and_indented_fences(tmp_path):
    found = _page(tmp_path)
    assert [b.language for b in found] == [
        "python", "bash", "bash", "python", "python", "python", "", "bash", "text"
    ]  # fmt: skip
    assert found[0].line == 3 and found[0].code == 'print("run")\n'
    assert found[1].code.startswith("torch-bam example")  # the list's indentation removed
    assert commands(found[1]) == ["torch-bam example    --steps 5   # a comment"]
    assert torch_bam_argv(commands(found[1])[0]) == ["example", "--steps", "5"]
    assert "not a block of its own" in found[-1].code


def test_markers(tmp_path):
    found = _page(tmp_path)
    assert skip_reason(found[2]) == "needs a GPU" and skip_reason(found[0]) is None
    assert skip_reason(found[3]) == ""
    assert run_by(found[4]) == ("my block", "tests/test_x.py")


def test_problems_are_found(tmp_path):
    found = _page(tmp_path)
    assert [problems(b) for b in found[:3]] == [[], [], []]
    assert "must give its reason" in problems(found[3])[0]
    assert "malformed marker" in problems(found[5])[0]
    assert "name the fence's language" in problems(found[6])[0]
    assert "mixes torch-bam commands and others" in problems(found[7])[0]
