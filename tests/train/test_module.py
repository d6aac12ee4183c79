"""ImageClassifier on its own: any nn.Module, weight-decay groups, warm-up and schedules."""

import lightning as L
import pytest
import torch
from torch import nn

from torch_bam.data import ClutteredDigitsDataModule
from torch_bam.train import ImageClassifier


def _fit(module, epochs=2):
    dm = ClutteredDigitsDataModule(batch_size=16, num_train=64, num_val=32, canvas_size=24, scale=2)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, dm)
    return trainer


def test_any_module_and_no_decay_groups():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 10),
    )  # fmt: skip
    module = ImageClassifier(net, num_classes=10, no_decay_bn_bias=True, schedule="constant")
    trainer = _fit(module, epochs=1)
    decay, no_decay = trainer.optimizers[0].param_groups
    assert [p.shape for p in decay["params"]] == [net[0].weight.shape, net[5].weight.shape]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    assert decay["nesterov"] and decay["momentum"] == 0.9


def test_cosine_with_linear_warmup():
    module = ImageClassifier("small_cnn", in_chans=1, lr=0.1, schedule="cosine", warmup_epochs=1)
    trainer = _fit(module, epochs=2)  # 4 steps per epoch, 8 in all
    sched = trainer.lr_scheduler_configs[0].scheduler
    factor = sched.lr_lambdas[0]
    assert factor(0) == pytest.approx(1 / 4) and factor(3) == pytest.approx(1.0)
    assert factor(4) == pytest.approx(1.0) and factor(6) == pytest.approx(0.5)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * factor(8))


def test_bad_schedule():
    with pytest.raises(ValueError, match="schedule"):
        ImageClassifier("small_cnn", schedule="linear")


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model"):
        ImageClassifier("no_such_net")


def test_batch_as_dict_with_boxes():
    module = ImageClassifier("small_cnn", in_chans=1)
    x, y = module._unpack({"image": torch.zeros(2, 1, 8, 8), "label": torch.zeros(2), "box": 0})
    assert x.shape == (2, 1, 8, 8) and y.shape == (2,)


def test_state_dict_holds_each_weight_once():
    from torch_bam.train import ImageClassifier

    module = ImageClassifier("bam_small_cnn", num_classes=10, in_chans=1)
    weights = [k for k in module.state_dict() if k.endswith("weight")]
    model_weights = [k for k in module.model.state_dict() if k.endswith("weight")]
    assert sorted(weights) == sorted(f"model.{k}" for k in model_weights)


def test_channels_last_trains_bam_in_that_format():
    module = ImageClassifier("bam_small_cnn", num_classes=10, in_chans=1, channels_last=True)
    convs = [
        m for m in module.model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
    ]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    trainer = _fit(module, epochs=1)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_sync_batchnorm_converts_every_bn_and_bam_takes_plain_autograd():
    from torch_bam import BAM
    from torch_bam.cpu.block import MIN_HIDDEN, can_use

    plain = ImageClassifier("bam_resnet18", num_classes=10)
    synced = ImageClassifier("bam_resnet18", num_classes=10, sync_batchnorm=True)
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.model.modules())
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.model.modules()) == n_bn > 0
    for model, expected in ((plain.model, True), (synced.model, False)):
        blocks = [m for m in model.modules() if isinstance(m, BAM)]
        wide = [b for b in blocks if b.channels // b.reduction_ratio >= MIN_HIDDEN]
        assert wide
        for b in wide:
            x = torch.randn(2, b.channels, 6, 6, requires_grad=True)
            # SyncBatchNorm is not a layer the memory-saving path recomputes: plain autograd.
            assert can_use(b, x) is expected


def test_compile_option_compiles_the_model_in_place():
    module = ImageClassifier("bam_small_cnn", num_classes=10, in_chans=1, compile=True)
    # nn.Module.compile in place: the module's own call goes through torch.compile, and the
    # state_dict keeps its plain keys (no `_orig_mod.`).
    assert module.model._compiled_call_impl is not None
    assert not any("_orig_mod" in k for k in module.state_dict())
    out = module.model.forward(torch.randn(2, 1, 24, 24))  # the uncompiled maths still runs
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_cosine_with_only_max_steps_spans_those_steps():
    # No max_epochs: Lightning sets trainer.max_epochs to -1; the schedule's length is the
    # steps the trainer will take (estimated_stepping_batches), not "-1 epochs".
    module = ImageClassifier("small_cnn", in_chans=1, lr=0.1, schedule="cosine")
    dm = ClutteredDigitsDataModule(batch_size=16, num_train=64, num_val=32, canvas_size=24, scale=2)
    seen = []

    class LR(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(
        max_steps=8,  # 4 steps per epoch: two epochs
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LR()],
    )
    trainer.fit(module, dm)
    assert trainer.max_epochs == -1 and trainer.global_step == 8
    import math

    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    assert seen == pytest.approx(expected)
