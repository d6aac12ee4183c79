"""count_macs and count_params."""

from torch import nn

from torch_bam.flops import count_macs, count_params


def _net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)
    )


def test_count_macs_is_the_convolutions_multiply_adds():
    # 3x3 conv 3->8 and 1x1 conv 8->4 on a 5x5 map (padding keeps the size).
    assert count_macs(_net(), (1, 3, 5, 5)) == 25 * (8 * 3 * 9 + 4 * 8)
    assert count_params(_net()) == (8 * 3 * 9 + 8) + 2 * 8 + (4 * 8 + 4)


def test_count_macs_keeps_each_modules_own_train_flag():
    # A BatchNorm put in eval (frozen statistics) inside a model in training mode stays in
    # eval; the rest stays in training (a model-wide train(flag) would flip the BatchNorm).
    net = _net().train()
    net[1].eval()
    before = {name: m.training for name, m in net.named_modules()}
    count_macs(net, (1, 3, 8, 8))
    assert {name: m.training for name, m in net.named_modules()} == before
    assert net.training and not net[1].training
