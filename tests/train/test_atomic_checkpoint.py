"""A checkpoint write that fails midway leaves the previous checkpoint whole and no stray file."""

import fsspec.implementations.local as local
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = TorchCheckpointIO()  # what Lightning's Trainer uses to write checkpoints
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.zeros(1000)}, path)
    before = path.read_bytes()

    real_write = local.LocalFileOpener.write

    def write_half_then_fail(self, data):
        real_write(self, bytes(data)[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(local.LocalFileOpener, "write", write_half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        io.save_checkpoint({"w": torch.ones(1000)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.equal(torch.load(path)["w"], torch.zeros(1000))
