"""The CPU room: a BAM block as it runs fastest on CPU, forward and backward.

It takes a block only when its gates hold the layers BAM builds (Linear, BatchNorm, ReLU,
Conv2d; Identity where folding removed a BatchNorm) and no hook is attached anywhere (on the
gates, their layers, or globally): then computing the layers here is exactly what the modules'
own forward would compute, and nothing (a hook, a pruning mask, a quantisation observer, a
replaced layer) can see the difference. Every other block takes the plain path, the modules'
own forward (:func:`plan` decides; ``torch_bam.dispatch`` calls it).

Two entry points:

- :func:`block_forward`: the layers with the CPU tricks of :mod:`torch_bam.cpu.layers` (the 1x1
  convs as matmuls, narrow maps NCHW) in training, differentiated by plain autograd; in eval the
  layers as the modules compute them, so that an eval output is bitwise the plain path's (and a
  trace's). Inference, torch.compile, and training where the memory-saving path below does not
  apply.
- :func:`bam_block_train`: the memory-saving autograd for training.

The memory-saving autograd. Plain autograd keeps, for backward, ``x`` plus every intermediate
of the spatial gate: six maps of ``C/r`` channels at full resolution, about 1.4x the input's
bytes in all. This path keeps only ``x``, two ``C/r``-channel maps (the 1x1 reduce's output and
the last dilated conv's), the global pool, ``M_c`` and ``M_s`` (about 1.13x) and, in backward:

1. runs the fused gate backward (``dx``, ``dM_c``, ``dM_s``);
2. recomputes the gates' other intermediates (the channel MLP from the kept global pool, and
   the ``C/r``-channel layers between the two kept maps) and backpropagates ``dM_c``,
   ``dM_s`` through them;
3. adds the pool's and the reduce conv's gradients into ``dx`` with one in-place batched
   matmul, instead of materialising two more full-size gradients and summing them.

Its forward calls the layers' modules (under ``no_grad``), so BatchNorm running statistics are
updated once, as in the plain path. Backward depends only on what forward saved: the tensors
the layers used (the parameters one slot per use, so a Parameter shared by two layers gets the
sum of both contributions; under ``torch.func.functional_call`` the substituted tensors), and
each layer's settings as they were (BatchNorm: batch or running statistics, eps; momentum is
not needed, as the recompute updates no statistics). Switching ``train()``/``eval()`` or
swapping weights between forward and backward changes nothing; changing a saved tensor in
place raises autograd's usual error. Double backward (``create_graph=True``) recomputes the
block from the saved tensors with plain autograd.

The path applies in eager training on CPU with backend ``"auto"`` (see :func:`can_use`: a gate
width ``C // r`` of at least ``MIN_HIDDEN``, no ``torch.func`` transform active); both paths
give the same results (tests/cpu/test_block_autograd.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import bam_gate, bam_gate_backward_op, get_backend
from .layers import final_1x1, narrow_layout, reduce_1x1

# ``block`` below is a torch_bam.BAM; not imported, as bam.py imports this room (via dispatch).
BAM = nn.Module

__all__ = ["MIN_HIDDEN", "bam_block_train", "block_forward", "can_use", "plan"]

# Below this gate width (C // r) plain autograd is as fast or faster: the recompute's small
# BatchNorms and convs cost about what the passes over x it saves do. From this width on the
# path is faster on large maps, and up to ~20% slower on small ones (16x16 and less), where it
# still keeps less memory (benchmarks/studies/RESULTS_block_autograd.md).
MIN_HIDDEN = 8

_MLP_LAYERS = (nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Identity)
_SPATIAL_LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Identity)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


# ---------------------------------------------------------------------------------------------
# Which blocks this room takes


def _hooked(m: nn.Module) -> bool:
    return bool(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
    )


def _global_hooks() -> bool:
    g = nn.modules.module
    return bool(
        g._global_forward_hooks
        or g._global_forward_pre_hooks
        or g._global_backward_hooks
        or g._global_backward_pre_hooks
    )


def _pointwise_1x1(m: nn.Module) -> bool:
    """A plain 1x1 conv, which :func:`reduce_1x1` and :func:`final_1x1` compute as matmuls."""
    return (
        type(m) is nn.Conv2d
        and m.kernel_size == (1, 1)
        and m.stride == (1, 1)
        and m.padding == (0, 0)
        and m.dilation == (1, 1)
        and m.groups == 1
    )


def plan(block: BAM, x: Tensor):
    """The gates' layers ``(mlp, spatial)`` as lists if this room takes ``block(x)``, else None.

    It takes plain CPU blocks (see the module docstring) in eager mode or under torch.compile,
    but not under a ``torch.func`` transform, whose wrapped tensors the C kernel cannot read.
    """
    if not isinstance(x, Tensor) or x.device.type != "cpu" or get_backend() != "auto":
        return None
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        return None
    if _global_hooks():
        return None
    channel, spatial = block.channel_att, block.spatial_att
    if _hooked(channel) or _hooked(spatial) or _hooked(channel.gate_c) or _hooked(spatial.gate_s):
        return None
    mlp, sp = list(channel.gate_c), list(spatial.gate_s)
    if not all(type(m) in _MLP_LAYERS and not _hooked(m) for m in mlp):
        return None
    if not mlp or type(mlp[0]) is not nn.Linear:
        return None  # the pool's output is kept for backward: nothing in place on it
    if not all(type(m) in _SPATIAL_LAYERS and not _hooked(m) for m in sp):
        return None
    if len(sp) < 2 or not (_pointwise_1x1(sp[0]) and _pointwise_1x1(sp[-1])):
        return None
    if sp[-1].out_channels != 1:
        return None
    return mlp, sp


def _last_dilated(sp: list) -> int:
    """Index, among the spatial gate's layers after the reduce, of the last dilated conv."""
    return [i for i, m in enumerate(sp[1:]) if type(m) is nn.Conv2d][-2]


def can_use(block: BAM, x: Tensor, layers=None) -> bool:
    """Whether ``block(x)`` takes the memory-saving training path (eager autograd recording,
    plain layers, a gate of at least ``MIN_HIDDEN`` channels); ``layers``: :func:`plan`'s."""
    if not isinstance(x, Tensor) or not torch.is_grad_enabled():
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False  # the compiler plans memory itself; traces want the plain ops
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return False
    layers = plan(block, x) if layers is None else layers
    if layers is None:
        return False
    mlp, sp = layers
    if not (x.requires_grad or any(p.requires_grad for m in mlp + sp for p in _params(m))):
        return False
    convs = [m for m in sp if type(m) is nn.Conv2d]
    if len(convs) < 3 or any(
        m.padding_mode != "zeros" or isinstance(m.padding, str) for m in convs
    ):
        return False  # backward calls the kept conv's own backward with these settings
    if sp[0].out_channels < MIN_HIDDEN:
        return False
    # The two kept maps are saved for backward: what follows each must not be in place on it
    # (a folded gate has Identity there, then an in-place ReLU).
    k = _last_dilated(sp)
    return type(sp[1]) is nn.BatchNorm2d and type(sp[k + 2]) is nn.BatchNorm2d


def _params(m: nn.Module) -> list[Tensor]:
    # Leaf layers only: their own parameters, without the recursive (and slow) parameters().
    return [p for p in m._parameters.values() if p is not None]


# ---------------------------------------------------------------------------------------------
# The layers with the CPU tricks


def _spatial_forward(sp: list, x: Tensor, training: bool, kept: list | None = None) -> Tensor:
    """The spatial gate: in training the 1x1 convs as matmuls and narrow maps NCHW (see
    torch_bam.cpu.layers); ``kept`` collects the reduce's output and the last dilated conv's.

    In eval the 1x1 convs are the modules' own: the matmuls round differently, and an eval
    output must be bitwise what the plain path, and so any trace of the network (FX, timm's
    feature extraction), computes: timm's FX test compares with ``==``. What this costs in
    inference: benchmarks/studies/RESULTS_eval_bits.md."""
    reduce, final = sp[0], sp[-1]
    if training:
        y = narrow_layout(reduce_1x1(x, reduce.weight, reduce.bias), training)
    else:
        y = reduce(x)
    k = _last_dilated(sp) if kept is not None else -1
    if kept is not None:
        kept.append(y)
    for i, layer in enumerate(sp[1:-1]):
        y = narrow_layout(layer(y), training)
        if i == k:
            kept.append(y)
    return final_1x1(y, final.weight, final.bias) if training else final(y)


def _mlp_forward(mlp: list, pooled: Tensor) -> Tensor:
    for layer in mlp:
        pooled = layer(pooled)
    return pooled


def block_forward(block: BAM, x: Tensor, layers) -> Tensor:
    """``block(x)`` with the CPU tricks, under plain autograd; ``layers``: :func:`plan`'s."""
    mlp, sp = layers
    channel_logits = _mlp_forward(mlp, F.adaptive_avg_pool2d(x, 1).flatten(1))
    spatial_logits = _spatial_forward(sp, x, block.spatial_att.training)
    inplace = block.inplace and not torch.is_grad_enabled()
    return bam_gate(x, channel_logits, spatial_logits, block.combine, inplace)


# ---------------------------------------------------------------------------------------------
# What forward saves: each layer's settings, and its tensors one slot per use

_LINEAR, _CONV, _REDUCE, _FINAL, _BATCHNORM, _RELU, _IDENTITY = range(7)


def _describe(layers: list, tensors: list, spatial: bool) -> tuple:
    """Each layer as a tuple ``(kind, slots..., settings...)``; appends its tensors to
    ``tensors`` (a slot is an index into it, -1 for none)."""

    def slot(t):
        if t is None:
            return -1
        tensors.append(t)
        return len(tensors) - 1

    out = []
    last = len(layers) - 1
    for i, m in enumerate(layers):
        kind = type(m)
        if kind is nn.Linear:
            out.append((_LINEAR, slot(m.weight), slot(m.bias)))
        elif kind is nn.Conv2d:
            code = _REDUCE if spatial and i == 0 else _FINAL if spatial and i == last else _CONV
            out.append(
                (code, slot(m.weight), slot(m.bias), m.stride, m.padding, m.dilation, m.groups)
            )
        elif kind is nn.BatchNorm1d or kind is nn.BatchNorm2d:
            batch_stats = m.training or (m.running_mean is None and m.running_var is None)
            w, b = slot(m.weight), slot(m.bias)
            rm = -1 if batch_stats else slot(m.running_mean)
            rv = -1 if batch_stats else slot(m.running_var)
            out.append((_BATCHNORM, w, b, rm, rv, batch_stats, m.eps))
        elif kind is nn.ReLU:
            out.append((_RELU, m.inplace))
        else:
            out.append((_IDENTITY,))
    return tuple(out)


def _run(spec: tuple, t: Tensor, tensors: list, training: bool) -> Tensor:
    """The described layers' maths on ``tensors``: no module calls, no hooks, no running-
    statistics update. The spatial gate's CPU tricks as in :func:`_spatial_forward`."""

    def get(i):
        return None if i < 0 else tensors[i]

    for entry in spec:
        t = narrow_layout(t, training)
        kind = entry[0]
        if kind == _LINEAR:
            t = F.linear(t, get(entry[1]), get(entry[2]))
        elif kind == _REDUCE:
            t = reduce_1x1(t, get(entry[1]), get(entry[2]))
        elif kind == _FINAL:
            t = final_1x1(t, get(entry[1]), get(entry[2]))
        elif kind == _CONV:
            _, w, b, stride, padding, dilation, groups = entry
            t = F.conv2d(t, get(w), get(b), stride, padding, dilation, groups)
        elif kind == _BATCHNORM:
            _, w, b, rm, rv, batch_stats, eps = entry
            t = F.batch_norm(t, get(rm), get(rv), get(w), get(b), batch_stats, 0.0, eps)
        elif kind == _RELU:
            t = F.relu(t, inplace=entry[1])
    return t


def _slots(spec: tuple) -> list[int]:
    """The slots of the layers' weights and biases (not running statistics)."""
    return [i for entry in spec if entry[0] <= _BATCHNORM for i in entry[1:3] if i >= 0]


def _reduce_backward(x: Tensor, dr: Tensor, weight: Tensor, dx: Tensor | None, dpool):
    """Grad of the 1x1 reduce's weight; adds ``W^T dr + dpool / HW`` into ``dx`` in place.

    Both additions can be one batched matmul: ``[W^T | dpool/HW] @ [dr ; 1]`` (NCHW), or
    ``[dr | 1] @ [W ; dpool/HW]`` (channels_last), accumulated into ``dx`` (beta = 1).
    """
    b, c, h, w = x.shape
    hidden, hw = weight.shape[0], h * w
    w2 = weight.reshape(hidden, c)
    nchw = x.is_contiguous()
    if nchw:
        x3 = x.reshape(b, c, hw)
        dr3 = dr.reshape(b, hidden, hw).to(x.dtype)
        dweight = torch.bmm(dr3, x3.transpose(1, 2)).sum(0)
    else:
        x3 = x.permute(0, 2, 3, 1).reshape(b, hw, c)
        dr3 = dr.permute(0, 2, 3, 1).reshape(b, hw, hidden).to(x.dtype)
        dweight = dr3.reshape(b * hw, hidden).t() @ x3.reshape(b * hw, c)
    if dx is not None:
        wt = w2.to(x.dtype)
        pool = (dpool.to(x.dtype) / hw) if dpool is not None else None
        # The augmented matmul copies W once per image: cheap when the maps are large next to
        # the bottleneck width (early stages); else add the pool term in a separate pass.
        augment = pool is not None and (hidden + 1) * 8 <= hw
        if nchw:
            dx3 = dx.view(b, c, hw)
            if augment:
                lhs = torch.cat([wt.t().expand(b, c, hidden), pool[:, :, None]], dim=2)
                dx3.baddbmm_(lhs, torch.cat([dr3, dr3.new_ones(b, 1, hw)], dim=1))
            else:
                dx3.baddbmm_(wt.t().expand(b, c, hidden), dr3)
                if pool is not None:
                    dx3.add_(pool[:, :, None])
        else:
            dx3 = dx.permute(0, 2, 3, 1).view(b, hw, c)
            if augment:
                rhs = torch.cat([wt.expand(b, hidden, c), pool[:, None, :]], dim=1)
                dx3.baddbmm_(torch.cat([dr3, dr3.new_ones(b, hw, 1)], dim=2), rhs)
            else:
                dx3.baddbmm_(dr3, wt.expand(b, hidden, c))
                if pool is not None:
                    dx3.add_(pool[:, None, :])
    return dweight.reshape(weight.shape).to(weight.dtype)


# ---------------------------------------------------------------------------------------------
# The memory-saving autograd

# Fixed leading arguments of _BAMBlockFunction.apply before the tensors' slots.
_SPEC, _MODULES, _X, _FIRST_SLOT = range(4)


class _BAMBlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, modules, x: Tensor, *tensors: Tensor) -> Tensor:
        # Grad mode is off here: the layers' modules run once, as in the plain path (BatchNorm
        # updates its running statistics); backward reads only what is saved below.
        mlp, sp = modules
        combine, training = spec[2:4]
        # Keep the global pool (tiny: [B, C]); recomputing it would be one more pass over x.
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        channel_logits = _mlp_forward(mlp, pooled)
        # Keep the 1x1 reduce's output and the last dilated conv's: backward recomputes only
        # the layers between them.
        kept: list[Tensor] = []
        spatial_logits = _spatial_forward(sp, x, training, kept)
        # The layers' tensors are saved too, though most are the modules' own parameters:
        # backward computes from them, and autograd's version check on saved tensors then
        # raises, as in plain autograd, if one was changed in place before backward.
        ctx.save_for_backward(x, pooled, *kept, channel_logits, spatial_logits, *tensors)
        ctx.spec = spec
        ctx.autocast = [
            (d, torch.get_autocast_dtype(d))
            for d in {x.device.type, "cpu"}
            if torch.amp.is_autocast_available(d) and torch.is_autocast_enabled(d)
        ]
        return bam_gate(x, channel_logits, spatial_logits, combine)

    @staticmethod
    def backward(ctx, grad: Tensor):
        saved = ctx.saved_tensors
        x, pooled, reduced, kept, channel_logits, spatial_logits = saved[:6]
        tensors = list(saved[6:])
        mlp_spec, sp_spec, combine, training, k = ctx.spec
        need = ctx.needs_input_grad[_FIRST_SLOT:]
        if torch.is_grad_enabled():
            # create_graph=True: the steps below are not differentiable (in-place matmuls, a
            # conv's own backward), so recompute the block with plain autograd instead.
            return _differentiable_backward(ctx, x, tensors, grad)
        dx, dc, ds = bam_gate_backward_op(grad, x, channel_logits, spatial_logits, combine)
        need_x = ctx.needs_input_grad[_X]
        reduce, conv = sp_spec[0], sp_spec[k + 1]
        before, after = sp_spec[1 : k + 1], sp_spec[k + 2 :]
        # One leaf per slot: a tensor used by two layers gets one gradient per use, which
        # autograd adds up at the function's input.
        pairs = zip(tensors, need, strict=True)
        leaves = [t.detach().requires_grad_() if n else t for t, n in pairs]
        grads: list[Tensor | None] = [None] * len(tensors)

        def wanted(spec):
            return [i for i in _slots(spec) if need[i]]

        after_slots, mlp_slots, before_slots = wanted(after), wanted(mlp_spec), wanted(before)
        with torch.enable_grad(), _autocast(ctx.autocast):
            pooled = pooled.detach().requires_grad_(need_x)
            reduced = reduced.detach().requires_grad_()  # its grad is also the bias's
            conv_in = _run(before, reduced, leaves, training)
            kept = kept.detach().requires_grad_()
            c2 = _run(mlp_spec, pooled, leaves, training)
            s2 = _run(after, kept, leaves, training)
            inputs = [kept] + [leaves[i] for i in after_slots + mlp_slots]
            inputs += [pooled] if need_x else []
            outs = [(c2, dc.reshape(c2.shape)), (s2, ds)]
            outs = [(o, g) for o, g in outs if o.requires_grad]  # c2 may be all frozen
            found = torch.autograd.grad(
                [o for o, _ in outs], inputs, [g for _, g in outs], allow_unused=True
            )
            dkept = found[0]
            n = len(after_slots) + len(mlp_slots)
            for i, g in zip(after_slots + mlp_slots, found[1 : 1 + n], strict=True):
                grads[i] = g
            dpool = found[-1] if need_x else None
            # The kept conv's own backward, then on through the recomputed layers before it.
            _, w_slot, b_slot, stride, padding, dilation, groups = conv
            weight = tensors[w_slot]
            dt = dkept.dtype
            has_bias = b_slot >= 0
            d_in, d_w, d_b = torch.ops.aten.convolution_backward(
                dkept,
                conv_in.detach().to(dt),
                weight.to(dt),
                [weight.shape[0]] if has_bias else None,
                stride,
                padding,
                dilation,
                False,
                [0, 0],
                groups,
                [True, need[w_slot], has_bias and need[b_slot]],
            )
            found = torch.autograd.grad(
                conv_in,
                [reduced] + [leaves[i] for i in before_slots],
                d_in.to(conv_in.dtype),
                allow_unused=True,
            )
        dr = found[0]
        for i, g in zip(before_slots, found[1:], strict=True):
            grads[i] = g
        if need[w_slot]:
            grads[w_slot] = d_w.to(weight.dtype)
        if has_bias and need[b_slot]:
            grads[b_slot] = d_b.to(tensors[b_slot].dtype)
        _, rw, rb = reduce[:3]
        dweight = _reduce_backward(x, dr, tensors[rw], dx if need_x else None, dpool)
        if need[rw]:
            grads[rw] = dweight
        if rb >= 0 and need[rb]:
            grads[rb] = dr.sum((0, 2, 3)).to(tensors[rb].dtype)
        return (None, None, dx if need_x else None, *grads)


def _differentiable_backward(ctx, x: Tensor, tensors: list, grad: Tensor):
    """Backward as a graph of its own (double backward): the block's maths in plain ops from
    the saved ``x`` and tensors, differentiated with ``create_graph=True``. It uses the same
    statistics as the forward pass (batch or running) and updates none."""
    mlp_spec, sp_spec, combine, training, _ = ctx.spec
    need_x = ctx.needs_input_grad[_X]
    need = ctx.needs_input_grad[_FIRST_SLOT:]
    # One view per slot (see backward); views keep the graph to the saved tensors.
    slots = [t.view_as(t) if n else t.detach() for t, n in zip(tensors, need, strict=True)]
    with _autocast(ctx.autocast):
        xr = x if need_x else x.detach()
        c = _run(mlp_spec, F.adaptive_avg_pool2d(xr, 1).flatten(1), slots, training)
        s = _run(sp_spec, xr, slots, training)
        y = bam_gate(xr, c, s, combine)
    wanted = [i for i, n in enumerate(need) if n]
    inputs = ([xr] if need_x else []) + [slots[i] for i in wanted]
    found = iter(torch.autograd.grad(y, inputs, grad, create_graph=True, allow_unused=True))
    dx = next(found) if need_x else None
    grads: list[Tensor | None] = [None] * len(tensors)
    for i, g in zip(wanted, found, strict=True):
        grads[i] = g
    return (None, None, dx, *grads)


class _autocast:
    """Re-enter the forward pass's autocast state for the recompute."""

    def __init__(self, states):
        self.ctxs = [torch.autocast(d, dtype=dt) for d, dt in states]

    def __enter__(self):
        for c in self.ctxs:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.ctxs):
            c.__exit__(*exc)


def bam_block_train(block: BAM, x: Tensor, layers=None) -> Tensor:
    """``block(x)`` through the memory-saving autograd function (see the module docstring);
    ``layers``: :func:`plan`'s."""
    mlp, sp = plan(block, x) if layers is None else layers
    tensors: list[Tensor] = []
    spec = (
        _describe(mlp, tensors, spatial=False),
        _describe(sp, tensors, spatial=True),
        block.combine,
        block.spatial_att.training,
        _last_dilated(sp),
    )
    return _BAMBlockFunction.apply(spec, (mlp, sp), x, *tensors)
