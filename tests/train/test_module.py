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
