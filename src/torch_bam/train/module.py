"""ImageClassifier: a LightningModule around any torch_bam model or any model after add_bam."""

from __future__ import annotations

import math

import lightning as L
import torch
import torchmetrics
from torch import nn

__all__ = ["ImageClassifier", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stops and keeps its last good checkpoint."""


class ImageClassifier(L.LightningModule):
    """Image classification with cross-entropy, SGD (Nesterov) and top-1 / top-5 error.

    Args:
        model: a registered model name (``"bam_resnet50"``) or an ``nn.Module``.
        num_classes: classes, passed to ``create_model`` for a name.
        in_chans: input channels, passed to ``create_model`` for a name when not 3.
        lr, momentum, nesterov, weight_decay: SGD settings (paper: momentum 0.9).
        no_decay_bn_bias: skip weight decay for BatchNorm weights and all biases.
        schedule: ``"step"`` (``lr * gamma`` at each of ``milestones``), ``"cosine"`` or
            ``"constant"``; epochs, counted as fractions of an epoch (updated every step).
        max_epochs: the cosine schedule's length; default: the steps the trainer will take
            (``max_epochs`` or ``max_steps``, whichever ends the run first).
        warmup_epochs: linear warm-up from 0 before the schedule.
        label_smoothing: cross-entropy label smoothing.
        channels_last, compile, sync_batchnorm: speed and DDP options.
    """

    def __init__(
        self,
        model: str | nn.Module = "bam_small_cnn",
        num_classes: int | None = 10,
        in_chans: int = 3,
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 1e-4,
        no_decay_bn_bias: bool = False,
        schedule: str = "step",
        milestones: list[float] | tuple[float, ...] = (30, 60, 90),
        gamma: float = 0.1,
        warmup_epochs: float = 0.0,
        max_epochs: int | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
        sync_batchnorm: bool = False,
    ):
        super().__init__()
        if schedule not in ("step", "cosine", "constant"):
            raise ValueError(
                "ImageClassifier: schedule must be 'step', 'cosine' or 'constant', "
                f"got {schedule!r}."
            )
        if num_classes is None:
            raise ValueError("ImageClassifier: num_classes is needed (the data's classes).")
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        if isinstance(model, str):
            from .. import create_model

            kwargs = {"in_chans": in_chans} if in_chans != 3 else {}
            model = create_model(model, num_classes=num_classes, **kwargs)
        if sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if compile:
            model.compile()  # in place: the state_dict keeps the plain `model.*` keys
        self.model = model
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        top_k = min(5, num_classes)
        self.top_k = top_k
        for stage in ("val", "test"):
            for k in (1, top_k):
                acc = torchmetrics.Accuracy("multiclass", num_classes=num_classes, top_k=k)
                setattr(self, f"{stage}_acc{k}", acc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    @staticmethod
    def _unpack(batch):
        if isinstance(batch, dict):
            return batch["image"], batch["label"]
        return batch[0], batch[1]

    def training_step(self, batch, batch_idx):
        x, y = self._unpack(batch)
        loss = self.criterion(self(x), y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"The training loss is {loss.item()} at global step {self.global_step} (epoch "
                f"{self.current_epoch}). The run stops; the last good checkpoint is kept. Try a "
                "lower learning rate, a longer warm-up, or precision 32."
            )
        # Two numbers, two names: Lightning logs the step's loss as train/loss_step and the mean
        # over the epoch's steps as train/loss_epoch (what an epoch's line and curve show).
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def _eval_step(self, batch, stage: str):
        x, y = self._unpack(batch)
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log(f"{stage}/loss", loss, sync_dist=True)
        for k in (1, self.top_k):
            getattr(self, f"{stage}_acc{k}").update(logits, y)

    def _log_errors(self, stage: str):
        # The paper reports error = 1 - accuracy; torchmetrics syncs the counts across processes.
        for k in (1, self.top_k):
            acc = getattr(self, f"{stage}_acc{k}")
            self.log(f"{stage}/top{k}_err", 1 - acc.compute(), prog_bar=k == 1)
            acc.reset()

    def on_validation_epoch_end(self):
        self._log_errors("val")

    def on_test_epoch_end(self):
        self._log_errors("test")

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # How the training images were preprocessed (input size, resize and crop, mean, std,
        # the data set), from the data module: what visualize and evaluation must feed it.
        data = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        recorded = getattr(data, "preprocessing", None)
        if isinstance(recorded, dict):
            checkpoint["preprocessing"] = dict(recorded)

    def on_train_start(self):
        batches = self.trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            self._steps_per_epoch = batches / self.trainer.accumulate_grad_batches
        if self.hparams.schedule == "cosine" and not self.hparams.max_epochs:
            # The loader exists now, so this builds nothing. With only --trainer.max_steps
            # Lightning's max_epochs is -1: the steps it will take are the schedule's length.
            steps = self.trainer.estimated_stepping_batches
            if not math.isfinite(steps):
                raise ValueError(
                    "ImageClassifier: the cosine schedule needs a length, and this run has "
                    "neither max_epochs nor max_steps. Set --trainer.max_epochs, "
                    "--trainer.max_steps or --model.max_epochs."
                )
            self._total_epochs = steps / self._steps_per_epoch
        for config in self.trainer.lr_scheduler_configs:  # the learning rate for this step
            sched = config.scheduler  # our LambdaLR: its factor needs the steps per epoch
            lrs = [
                base * f(sched.last_epoch)
                for base, f in zip(sched.base_lrs, sched.lr_lambdas, strict=True)
            ]
            for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr

    def _param_groups(self):
        hp = self.hparams
        if not hp.no_decay_bn_bias:
            return [{"params": [p for p in self.parameters() if p.requires_grad]}]
        decay, no_decay = [], []
        for module in self.model.modules():
            norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                (no_decay if norm or name == "bias" else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(
            self._param_groups(),
            lr=hp.lr,
            momentum=hp.momentum,
            nesterov=hp.nesterov and hp.momentum > 0,
            weight_decay=hp.weight_decay,
        )
        # Steps per epoch are known only once the train loader exists (on_train_start); asking
        # Lightning earlier (estimated_stepping_batches) would build the loader before a resumed
        # run restores the loader's position.
        self._total_epochs = float(hp.max_epochs or 1)  # without max_epochs: on_train_start
        warmup, milestones, gamma, kind = (
            hp.warmup_epochs,
            list(hp.milestones),
            hp.gamma,
            hp.schedule,
        )
        self._steps_per_epoch = 1.0

        def factor(step: int) -> float:
            steps_per_epoch = self._steps_per_epoch
            epoch = step / steps_per_epoch
            if warmup > 0 and epoch < warmup:
                return (step + 1) / (warmup * steps_per_epoch)
            if kind == "step":
                return gamma ** sum(epoch >= m for m in milestones)
            if kind == "cosine":
                t = min(1.0, (epoch - warmup) / max(1e-8, self._total_epochs - warmup))
                return 0.5 * (1 + math.cos(math.pi * t))
            return 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
