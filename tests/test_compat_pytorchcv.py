"""pytorchcv's BAM-ResNets: converted weights give pytorchcv's own outputs and gradients."""

import pytest
import torch
from torch import nn

import torch_bam
from torch_bam.compat import convert_pytorchcv_state_dict, official_bam_resnet

bamresnet = pytest.importorskip("pytorchcv.models.bamresnet")


@torch.no_grad()
def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random BN affine parameters and statistics, random biases, and the network's own random
    conv and linear weights (scaled for depth: 0.2 * randn, as tests.helpers.randomize_ draws,
    overflows float32 through a ResNet-101). BN away from its defaults exposes a BN in the
    wrong place in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return module


def _pair(depth: int, seed: int):
    """pytorchcv's bam_resnet<depth> with random weights and BN statistics, and the network
    ``pretrained=True`` builds for such weights, loaded with them."""
    torch.manual_seed(seed)
    ref = _randomize(getattr(bamresnet, f"bam_resnet{depth}")(), seed=seed)
    if depth == 50:  # the registered weights' own configuration
        ours = torch_bam.create_model("bam_resnet50.ptcv_in1k")
    else:
        ours = official_bam_resnet(depth)
    ours.load_state_dict(convert_pytorchcv_state_dict(ref.state_dict()), strict=True)
    return ref, ours


def _close(actual, expected, rtol=1e-5):
    # Relative to the largest value: random BN statistics through a deep network give values
    # of very different sizes.
    atol = rtol * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def test_eval_at_224_unchanged_reference():
    ref, ours = _pair(18, seed=0)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _close(ours.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("depth", [18, 50, 101])
def test_eval_train_and_gradients_match(depth):
    ref, ours = _pair(depth, seed=depth)
    # pytorchcv's head is AvgPool2d(7), which only fits 224x224 inputs; on the smaller inputs
    # used here it is the global average our network takes.
    ref.features.final_pool = nn.AdaptiveAvgPool2d(1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _close(ours.eval()(x), ref.eval()(x))  # float32, 1e-5

    # Training mode and gradients in float64, where agreement can be tight (1e-9): float32
    # gradients of near-zero size differ by rounding alone.
    ref.double().train(), ours.double().train()
    x = x.double()
    out_ref, out_ours = ref(x), ours(x)
    _close(out_ours, out_ref, rtol=1e-9)
    out_ref.pow(2).mean().backward()
    out_ours.pow(2).mean().backward()
    grads_ref = convert_pytorchcv_state_dict(
        {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    )
    grads_ours = {n: p.grad for n, p in ours.named_parameters()}
    assert grads_ref.keys() == grads_ours.keys()
    # Against the largest gradient: a bias just before a BatchNorm has a true gradient of zero,
    # computed as rounding noise (1e-18) by both networks.
    scale = max(g.abs().max().item() for g in grads_ref.values())
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads_ours[name], g, rtol=1e-9, atol=1e-9 * scale)
    # The BN statistics moved the same way in training mode.
    stats_ref = convert_pytorchcv_state_dict(ref.state_dict())
    for name, value in ours.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            _close(value, stats_ref[name], rtol=1e-9)


@pytest.mark.parametrize("depth", [34, 152])
def test_every_depth_converts_strictly(depth):
    ref = getattr(bamresnet, f"bam_resnet{depth}")()
    out = convert_pytorchcv_state_dict(ref.state_dict())
    official_bam_resnet(depth).load_state_dict(out, strict=True)


def test_refuses_other_networks():
    from pytorchcv.models.cbamresnet import cbam_resnet18
    from pytorchcv.models.resnet import resnet18

    for other in (resnet18(), cbam_resnet18(), torch_bam.create_model("bam_resnet18")):
        with pytest.raises(ValueError, match="pytorchcv's BAM-ResNet") as error:
            convert_pytorchcv_state_dict(other.state_dict())
        assert "\n" not in str(error.value) and len(str(error.value)) < 500
    with pytest.raises(ValueError, match="empty"):
        convert_pytorchcv_state_dict({})
    with pytest.raises(TypeError, match="expects a state_dict mapping"):
        convert_pytorchcv_state_dict([1])


def test_refuses_plain_resnet_keys_without_bam():
    sd = bamresnet.bam_resnet18().state_dict()
    no_bam = {k: v for k, v in sd.items() if ".bam." not in k}
    with pytest.raises(ValueError, match="no BAM weights"):
        convert_pytorchcv_state_dict(no_bam)


def test_layout_checked_when_loading_pytorchcv_weights_into_the_paper_layout(tmp_path):
    """The paper-layout network (stride in the 1x1) takes the keys but not the weights."""
    from torch_bam.compat import check_official_layout

    sd = convert_pytorchcv_state_dict(bamresnet.bam_resnet50().state_dict())
    with pytest.raises(ValueError, match="stride_in_3x3=True"):
        check_official_layout(torch_bam.create_model("bam_resnet50", combine="product"), sd)
    with pytest.raises(ValueError, match="combine='product'"):
        check_official_layout(torch_bam.create_model("bam_resnet50", stride_in_3x3=True), sd)
