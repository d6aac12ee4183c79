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


class _Tiny(__import__("lightning").LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("resuming", [True, False])
def test_checkpoint_directory_warning_only_for_a_new_run(tmp_path, resuming):
    # A resumed run's checkpoint directory holds its own files: Lightning's "exists and is not
    # empty" is for a new run that would mix its files with another's, and only there.
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from torch_bam._upstream_warnings import lightning_calls
    from torch_bam.train.checkpoints import RunCheckpoint

    (tmp_path / "epoch=0-step=1.ckpt").write_bytes(b"earlier")
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RunCheckpoint(dirpath=str(tmp_path), resuming=resuming, save_top_k=1)],
    )
    with warnings.catch_warnings(record=True) as caught, lightning_calls():
        warnings.simplefilter("always")
        trainer.fit(_Tiny(), DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2))
    said = [w for w in caught if "exists and is not empty" in str(w.message)]
    assert bool(said) is not resuming, [str(w.message) for w in caught]
