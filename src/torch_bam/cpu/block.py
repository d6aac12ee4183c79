"""Memory-saving autograd for a whole BAM block in training.

Plain autograd keeps, for backward, ``x`` plus every intermediate of the spatial gate: six maps
of ``C/r`` channels at full resolution, about 1.4x the input's bytes in all. This function keeps
only ``x``, two ``C/r``-channel maps (the 1x1 reduce's output and the last dilated conv's),
the global pool, ``M_c`` and ``M_s`` (about 1.13x) and, in backward:

1. runs the fused gate backward (``dx``, ``dM_c``, ``dM_s``);
2. recomputes the gates' other intermediates (the channel MLP from the kept global pool, and
   the ``C/r``-channel layers between the two kept maps) and backpropagates ``dM_c``,
   ``dM_s`` through them;
3. adds the pool's and the reduce conv's gradients into ``dx`` with one in-place batched
   matmul, instead of materialising two more full-size gradients and summing them.

The forward pass calls the block's own submodules (under ``no_grad``), so BatchNorm running
statistics are updated once, and forward hooks (``record_attention``) fire once. The recompute
uses batch statistics and touches no running statistics. BatchNorms in eval mode inside a
training block (frozen BN) recompute with their running statistics, as their forward did.

:meth:`torch_bam.BAM.forward` takes this path in training when it applies (plain layers, no
inner hooks, a gate width ``C // r`` of at least ``MIN_HIDDEN``, not under torch.compile, FX or
TorchScript, backend ``"auto"``), and the plain autograd path otherwise; both give the same
results. Double backward (``create_graph=True``) recomputes the block with plain autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import _bam_gate_backward_op, bam_gate, get_backend
from .layers import final_1x1, narrow_layout

# ``block`` below is a torch_bam.BAM; not imported, as bam.py imports this room (via dispatch).
BAM = nn.Module

__all__ = ["bam_block_train", "can_use"]

# Below this gate width (C // r) plain autograd is as fast or faster: the recompute's small
# BatchNorms and convs cost about what the passes over x it saves do. From this width on the
# path is faster on large maps, and up to ~20% slower on small ones (16x16 and less), where it
# still keeps less memory (benchmarks/RESULTS_block_autograd.md).
MIN_HIDDEN = 8

_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.Identity)


def _observer(hook) -> bool:
    # Hooks that only read outputs (record_attention's) do not change what backward must see.
    return getattr(hook, "_torch_bam_observer", False)


def can_use(block: BAM, x: Tensor) -> bool:
    """Whether ``block(x)`` may take the memory-saving path (training, plain layers, eager)."""
    if not isinstance(x, Tensor) or get_backend() != "auto" or not torch.is_grad_enabled():
        return False
    if x.device.type == "meta":  # shape and FLOP counting: nothing to save memory for
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False  # the compiler plans memory itself; traces want the plain ops
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return False
    params = list(block.parameters())
    if not (x.requires_grad or any(p.requires_grad for p in params)):
        return False
    for gate in (block.channel_att, block.spatial_att):
        if gate._forward_pre_hooks or gate._backward_hooks or gate._backward_pre_hooks:
            return False
        if not all(_observer(h) for h in gate._forward_hooks.values()):
            return False
        for layer in gate.children():
            for sub in layer.children():
                if type(sub) not in _LAYERS or sub._forward_hooks or sub._forward_pre_hooks:
                    return False
                if sub._backward_hooks or sub._backward_pre_hooks:
                    return False
    gate_s = block.spatial_att.gate_s
    convs = [m for m in gate_s if type(m) is nn.Conv2d]
    if len(convs) < 3 or any(
        m.padding_mode != "zeros" or isinstance(m.padding, str) for m in convs
    ):
        return False  # backward calls the kept conv's own backward with these settings
    reduce = gate_s[0]
    if type(reduce) is not nn.Conv2d or reduce.kernel_size != (1, 1) or reduce.groups != 1:
        return False
    if reduce.out_channels < MIN_HIDDEN:
        return False
    # The reduce's output is saved for backward: what follows it must not be in place on it
    # (a folded gate has Identity there, then an in-place ReLU).
    return len(gate_s) > 1 and type(gate_s[1]) is nn.BatchNorm2d


def _run(layers, t: Tensor) -> Tensor:
    """The layers' maths without their module calls: no hooks, no running-statistics update.
    Narrow maps keep the NCHW layout in training, as in :class:`torch_bam.SpatialGate`."""
    for layer in layers:
        t = narrow_layout(t, layer.training)
        kind = type(layer)
        if kind is nn.Linear:
            t = F.linear(t, layer.weight, layer.bias)
        elif kind is nn.Conv2d and layer.out_channels == 1 and layer.kernel_size == (1, 1):
            t = final_1x1(t, layer.weight, layer.bias)  # as SpatialGate runs it
        elif kind is nn.Conv2d:
            t = layer._conv_forward(t, layer.weight, layer.bias)
        elif kind is nn.BatchNorm1d or kind is nn.BatchNorm2d:
            batch_stats = layer.training or layer.running_mean is None
            mean = None if batch_stats else layer.running_mean
            var = None if batch_stats else layer.running_var
            t = F.batch_norm(t, mean, var, layer.weight, layer.bias, batch_stats, 0.0, layer.eps)
        elif kind is nn.ReLU:
            t = F.relu(t, inplace=layer.inplace)
    return t


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


def _last_dilated(block: BAM) -> int:
    """Index, among the spatial gate's layers after the reduce, of the last dilated conv."""
    layers = list(block.spatial_att.gate_s)[1:]
    return [i for i, m in enumerate(layers) if type(m) is nn.Conv2d][-2]


class _BAMBlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, block: BAM, x: Tensor, *params: Tensor) -> Tensor:
        # Grad mode is off here: the submodules run once, as in the plain path.
        # Keep the global pool (tiny: [B, C]); recomputing it would be one more pass over x.
        pooled: list[Tensor] = []
        pool_hook = block.channel_att.gate_c.register_forward_pre_hook(
            lambda _m, inp: pooled.append(inp[0])
        )
        try:
            channel_logits = block.channel_att(x)
        finally:
            pool_hook.remove()
        # Keep the 1x1 reduce's output (the input of the layer after it) and the last dilated
        # conv's output: backward recomputes only the layers between them.
        layers = list(block.spatial_att.gate_s)[1:]
        reduced: list[Tensor] = []
        kept: list[Tensor] = []
        hooks = [
            layers[0].register_forward_pre_hook(lambda _m, inp: reduced.append(inp[0])),
            layers[_last_dilated(block)].register_forward_hook(
                lambda _m, _i, out: kept.append(out)
            ),
        ]
        try:
            spatial_logits = block.spatial_att(x)
        finally:
            for hook in hooks:
                hook.remove()
        # The parameters (and a frozen BN's running statistics) are saved too, though they are
        # the module's own tensors: backward recomputes from them, and autograd's version check
        # on saved tensors then raises, as in plain autograd, if one was changed in place
        # between forward and backward (instead of silently using the new values).
        frozen = [
            stat
            for gate in (block.channel_att.gate_c, block.spatial_att.gate_s)
            for m in gate
            if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) and not m.training
            for stat in (m.running_mean, m.running_var)
            if stat is not None
        ]
        ctx.save_for_backward(
            x, pooled[0], reduced[0], kept[0], channel_logits, spatial_logits, *params, *frozen
        )
        ctx.block, ctx.params = block, params
        ctx.autocast = [
            (d, torch.get_autocast_dtype(d))
            for d in {x.device.type, "cpu"}
            if torch.amp.is_autocast_available(d) and torch.is_autocast_enabled(d)
        ]
        return bam_gate(x, channel_logits, spatial_logits, block.combine)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, pooled, reduced, kept, channel_logits, spatial_logits = ctx.saved_tensors[:6]
        block: BAM = ctx.block
        if torch.is_grad_enabled():
            # create_graph=True: the steps below are not differentiable (in-place matmuls, a
            # conv's own backward), so recompute the block with plain autograd instead.
            return _BAMBlockFunction._differentiable_backward(ctx, x, grad)
        dx, dc, ds = _bam_gate_backward_op(grad, x, channel_logits, spatial_logits, block.combine)
        need_x = ctx.needs_input_grad[1]
        reduce = block.spatial_att.gate_s[0]
        layers = list(block.spatial_att.gate_s)[1:]
        k = _last_dilated(block)
        conv = layers[k]

        def trainable(modules):
            # Leaf layers only (can_use checked): their own parameters, without the recursive
            # (and, per call, slow) Module.parameters().
            return [
                p
                for m in modules
                for p in m._parameters.values()
                if p is not None and p.requires_grad
            ]

        before, after = trainable(layers[:k]), trainable(layers[k + 1 :])
        mlp = trainable(block.channel_att.gate_c)
        by_param: dict[int, Tensor | None] = {}
        with torch.enable_grad(), _autocast(ctx.autocast):
            pooled = pooled.detach().requires_grad_(need_x)
            reduced = reduced.detach().requires_grad_()  # its grad is also the bias's
            conv_in = _run(layers[:k], reduced)
            kept = kept.detach().requires_grad_()
            c2 = _run(block.channel_att.gate_c, pooled)
            s2 = _run(layers[k + 1 :], kept)
            inputs = [kept, *after, *mlp] + ([pooled] if need_x else [])
            outs = [(c2, dc.reshape(c2.shape)), (s2, ds)]
            outs = [(o, g) for o, g in outs if o.requires_grad]  # c2 may be all frozen
            grads = torch.autograd.grad(
                [o for o, _ in outs], inputs, [g for _, g in outs], allow_unused=True
            )
            dkept = grads[0]
            n = len(after) + len(mlp)
            by_param.update(zip(map(id, after + mlp), grads[1 : 1 + n], strict=True))
            dpool = grads[-1] if need_x else None
            # The kept conv's own backward, then on through the recomputed layers before it.
            dt = dkept.dtype
            has_bias = conv.bias is not None
            d_in, d_w, d_b = torch.ops.aten.convolution_backward(
                dkept,
                conv_in.detach().to(dt),
                conv.weight.to(dt),
                [conv.out_channels] if has_bias else None,
                conv.stride,
                conv.padding,
                conv.dilation,
                False,
                [0, 0],
                conv.groups,
                [True, conv.weight.requires_grad, has_bias and conv.bias.requires_grad],
            )
            grads = torch.autograd.grad(
                conv_in, [reduced, *before], d_in.to(conv_in.dtype), allow_unused=True
            )
        dr = grads[0]
        by_param.update(zip(map(id, before), grads[1:], strict=True))
        if conv.weight.requires_grad:
            by_param[id(conv.weight)] = d_w.to(conv.weight.dtype)
        if has_bias and conv.bias.requires_grad:
            by_param[id(conv.bias)] = d_b.to(conv.bias.dtype)
        dweight = _reduce_backward(x, dr, reduce.weight, dx if need_x else None, dpool)
        if reduce.weight.requires_grad:
            by_param[id(reduce.weight)] = dweight
        if reduce.bias is not None and reduce.bias.requires_grad:
            by_param[id(reduce.bias)] = dr.sum((0, 2, 3)).to(reduce.bias.dtype)
        param_grads = [by_param.get(id(p)) for p in ctx.params]
        return (None, dx if need_x else None, *param_grads)

    @staticmethod
    def _differentiable_backward(ctx, x: Tensor, grad: Tensor):
        """Backward as a graph of its own (double backward): the block's maths in plain ops
        from the saved ``x``, differentiated with ``create_graph=True``. It uses the same
        statistics as the forward pass (batch or running) and updates none."""
        block: BAM = ctx.block
        need_x = ctx.needs_input_grad[1]
        params = [p for p, need in zip(ctx.params, ctx.needs_input_grad[2:], strict=True) if need]
        with _autocast(ctx.autocast):
            xr = x if need_x else x.detach()
            c = _run(block.channel_att.gate_c, F.adaptive_avg_pool2d(xr, 1).flatten(1))
            s = _run(block.spatial_att.gate_s, xr)
            y = bam_gate(xr, c, s, block.combine)
        inputs = ([xr] if need_x else []) + params
        grads = iter(torch.autograd.grad(y, inputs, grad, create_graph=True, allow_unused=True))
        dx = next(grads) if need_x else None
        by_param = {id(p): g for p, g in zip(params, grads, strict=True)}
        return (None, dx, *(by_param.get(id(p)) for p in ctx.params))


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


def bam_block_train(block: BAM, x: Tensor) -> Tensor:
    """``block(x)`` through the memory-saving autograd function (see the module docstring)."""
    return _BAMBlockFunction.apply(block, x, *block.parameters())
