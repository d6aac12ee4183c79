"""Our commands print no warning about our own use of Lightning, and hide only what is not ours."""

import sys
import warnings

import pytest
import torch


def test_lightning_cli_gets_no_args_warning_from_python(monkeypatch, capsys):
    # main([...]) from Python (a test, a notebook) while sys.argv holds the caller's arguments.
    from torch_bam.cli import main

    monkeypatch.setattr(sys, "argv", ["pytest", "-q", "tests"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as done:
            main(["fit", "--print_config"])
    assert done.value.code in (0, None)
    assert "trainer:" in capsys.readouterr().out  # it parsed our arguments, not pytest's
    assert not [w for w in caught if "args parameter" in str(w.message)]
    assert sys.argv == ["pytest", "-q", "tests"]  # restored


def test_lightning_pytree_deprecation_is_hidden_only_around_lightning():
    from lightning.pytorch.utilities._pytree import _tree_flatten

    from torch_bam._upstream_warnings import lightning_calls

    batch = [torch.zeros(2), 3]
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        _tree_flatten(batch)
    # Lightning still builds a LeafSpec, which torch deprecates: the filter is still needed.
    assert [w for w in outside if "LeafSpec" in str(w.message)]
    with warnings.catch_warnings(record=True) as inside:
        warnings.simplefilter("always")
        with lightning_calls():
            _tree_flatten(batch)
            msg = "`isinstance(treespec, LeafSpec)` is deprecated"
            warnings.warn(msg, FutureWarning, stacklevel=1)
    # Only Lightning's own is hidden: the same message from our code still shows.
    assert [str(w.message) for w in inside] == ["`isinstance(treespec, LeafSpec)` is deprecated"]
