"""train.progress.EpochLines: the time on an epoch's line is the epoch's, validation included."""

import re
import time

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torch_bam.train.progress import EpochLines


class _Slow(L.LightningModule):
    """Each training step sleeps 50 ms: an epoch of 4 steps takes at least 0.2 s."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, _):
        time.sleep(0.05)
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_epoch_line_times_the_whole_epoch(capsys):
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[EpochLines()],
    )
    trainer.fit(_Slow(), data, data)
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch 1/1")][0]
    seconds = float(re.search(r"\(([\d.]+) s\)$", line).group(1))
    assert seconds >= 0.2, line
