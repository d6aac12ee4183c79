"""The BAM block on CUDA: one autograd node per block over two registered ops.

Why not autograd over the layers: on a GPU the block's time was host time. The CPU room's
memory-saving autograd (torch_bam.cpu.block) recomputes layers with nested ``autograd.grad``
calls, and the plain module path launches ~60 small kernels plus autograd bookkeeping per
block (the GPU baseline measured on an H100 before this path). Here the block is

* ``torch_bam::bam_block_cuda`` -- the forward, a ``torch.library`` op with a fake
  implementation, so ``torch.compile(fullgraph=True)`` traces through it as one opaque node;
* ``torch_bam::bam_block_cuda_backward`` -- its backward, another opaque op, which calls the
  ATen backward ops of the narrow branch directly (``native_batch_norm_backward``,
  ``convolution_backward``, ``threshold_backward``, ``mm``) and the Triton kernels of
  ``torch_bam.cuda.kernels`` for the work on ``x``-sized maps;
* ``_BlockFunction`` -- the autograd node joining them. Under torch.compile it calls the ops;
  in eager mode it calls their implementations directly (a custom op's Python dispatch costs
  host time). Not ``register_autograd`` on the forward op: that wraps each of the op's ~20
  tensor inputs and outputs in extra ``detach`` calls, forward and backward, would make every
  saved tensor an output of the op, and an op that updates BatchNorm buffers in place could
  not have one at all.

The passes over ``x``-sized maps, per training step:

    forward   pool_reduce           reads x: the global pool and the 1x1 reduce in one pass
              gate_forward          reads x, writes y
    backward  gate_backward_reduce  reads x, dy: dM_c (over pixels), dM_s (over channels)
              reduce_weight_grad    reads x (and the narrow dr): the reduce conv's weight grad
              gate_backward_dx      reads dy, writes dx = dy (1 + g) + W_r^T dr + dpool / HW

Everything else works on the narrow branch: ``C // r`` channels (1/16 of ``x``) or ``[B, C]``,
channels_last (``pool_reduce`` writes ``r`` so; cuDNN's 3x3 convolutions prefer it on a GPU --
a choice not yet measured against NCHW there). Weights are cast to the compute dtype (autocast's,
else x's) once per forward, and backward reuses the casts.

Saved for backward: ``x``, the reduce conv's output ``r`` and the last dilated conv's output
(two ``C // r``-channel maps), ``M_c``, ``M_s``, the [B, C]-sized channel-MLP values and the
batch statistics: about 1.13x the input's bytes at r = 16 (tests/cuda/test_block.py bounds it
at 1.15x). Backward recomputes the layers between the two kept maps (BatchNorm + ReLU, one
narrow dilated conv).

BatchNorm running statistics: in eager mode ``native_batch_norm`` updates the buffers in place,
as the plain path does; under torch.compile the (functional) forward op returns updated copies,
which :func:`block_forward` copies into the buffers with one ``_foreach_copy_``.

Second-order gradients are not supported: backward with ``create_graph=True`` raises a
RuntimeError that names the fix.

All the work runs on CUDA tensors; with ``torch_bam.functional.set_backend("triton")`` and
``TRITON_INTERPRET=1`` it also runs on CPU tensors, which is how CI tests it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["block_forward", "plan"]

_aten = torch.ops.aten
# What dispatch accepts in the gates: the layers BAM builds, nothing else.
_RELU, _LINEAR, _CONV, _BN1, _BN2 = nn.ReLU, nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d


def _kernels():
    from . import kernels  # imports triton: only when a block runs here

    return kernels


# ---------------------------------------------------------------------------------------------
# Which blocks this path takes


def _plain_layer(m: nn.Module) -> bool:
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or m._backward_pre_hooks)  # fmt: skip


def _bn_ok(m: nn.Module, kind) -> bool:
    if type(m) is not kind or not m.affine or not m.track_running_stats:
        return False
    # momentum=None means a cumulative average, 1 / num_batches_tracked: a host read.
    return not (m.training and m.momentum is None)


def _conv_ok(m: nn.Module, cin: int, cout: int, k: int) -> bool:
    return (
        type(m) is _CONV
        and m.in_channels == cin
        and m.out_channels == cout
        and m.kernel_size == (k, k)
        and m.stride == (1, 1)
        and m.groups == 1
        and m.bias is not None
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and m.padding[0] == m.padding[1]
        and m.dilation[0] == m.dilation[1]
        and m.padding[0] == m.dilation[0] * (k // 2)  # the map keeps its size
    )


def _structure(block: nn.Module):
    """(mlp layers, spatial layers) as lists if the gates are the layers BAM builds, else None."""
    channel, spatial = block.channel_att, block.spatial_att
    if not (_plain_layer(channel) and _plain_layer(spatial)):
        return None  # hooks on a gate (record_attention): the plain path calls the gates
    mlp, sp = list(channel.gate_c), list(spatial.gate_s)
    if not all(_plain_layer(m) for m in mlp + sp):
        return None
    if len(mlp) % 3 != 1 or len(sp) % 3 != 1 or len(sp) < 7:  # >= 1 dilated conv
        return None
    for i in range(0, len(mlp) - 1, 3):
        lin, bn, relu = mlp[i : i + 3]
        if not (type(lin) is _LINEAR and lin.bias is not None and _bn_ok(bn, _BN1)):
            return None
        if type(relu) is not _RELU:
            return None
    if type(mlp[-1]) is not _LINEAR or mlp[-1].bias is None:
        return None
    c, h = block.channels, sp[0].out_channels if type(sp[0]) is _CONV else 0
    for i in range(0, len(sp) - 1, 3):
        conv, bn, relu = sp[i : i + 3]
        ok = _conv_ok(conv, c, h, 1) if i == 0 else _conv_ok(conv, h, h, 3)
        if not (ok and _bn_ok(bn, _BN2) and type(relu) is _RELU):
            return None
    if not _conv_ok(sp[-1], h, 1, 1):
        return None
    return mlp, sp


def plan(block: nn.Module, x: Tensor):
    """The gates' layers ``(mlp, spatial)`` for :func:`block_forward` if it takes ``block(x)``,
    else None: it takes it when the kernels take x and the gates hold exactly the layers BAM
    builds (no hooks, biases present, affine BatchNorms with running statistics and a
    momentum)."""
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return None
    if not _kernels().supported(x):
        return None
    return _structure(block)


# ---------------------------------------------------------------------------------------------
# The ops


def _format(x: Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _FakeKernels:
    """Shapes, dtypes and layouts of the kernels' outputs, for the ops' fake implementations
    (the same code as the real ones then runs on fake tensors, so both always agree)."""

    @staticmethod
    def pool_reduce(x, w_reduce, b_reduce=None):
        b, c, h, w = x.shape
        r = x.new_empty((b, w_reduce.shape[0], h, w)).contiguous(memory_format=torch.channels_last)
        return x.new_empty((b, c), dtype=torch.float32), r

    @staticmethod
    def gate_forward(x, c, s, product):
        return torch.empty_like(x, memory_format=_format(x))

    @staticmethod
    def gate_backward_reduce(dy, x, c, s, product):
        b, ch, h, w = x.shape
        f32 = torch.float32
        return x.new_empty((b, ch), dtype=f32), x.new_empty((b, 1, h, w), dtype=f32)

    @staticmethod
    def gate_backward_dx(dy, c, s, product, w_reduce=None, dr=None, dpool=None):
        return torch.empty_like(dy, memory_format=_format(dy))

    @staticmethod
    def reduce_weight_grad(x, dr):
        return x.new_empty((dr.shape[1], x.shape[1]), dtype=torch.float32)


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)  # no dispatch when nothing changes


def _stats_dtype(z: Tensor, w: Tensor) -> torch.dtype:
    """The dtype of the batch statistics that the device's native_batch_norm gives and its
    backward takes: float32 on CUDA; on CPU the BatchNorm's parameters' dtype (float32 under
    autocast, the model's for a ``.half()`` / ``.bfloat16()`` model). The meta function says
    x's dtype on CPU, so the ops cast to this one for their fake and real outputs to agree."""
    return torch.float32 if z.device.type == "cuda" else w.dtype


def _empty_stats(z: Tensor) -> Tensor:
    return z.new_empty((0,), dtype=torch.float32)


def _bn(z: Tensor, w, b, rm, rv, train: bool, momentum: float, eps: float, in_place: bool):
    """native_batch_norm as nn.BatchNorm runs it. In training it updates the running statistics
    in place (eager), or copies of them that come back updated (the functional op)."""
    if train:
        if not in_place:
            rm, rv = rm.clone(), rv.clone()
        out, mean, invstd = _aten.native_batch_norm(z, w, b, rm, rv, True, momentum, eps)
        dt = _stats_dtype(z, w)
        return out, _cast(mean, dt), _cast(invstd, dt), rm, rv
    out = _aten.native_batch_norm(z, w, b, rm, rv, False, momentum, eps)[0]
    return out, _empty_stats(z), _empty_stats(z), rm, rv


def _bn_again(z: Tensor, w, b, rm, rv, train: bool, eps: float) -> Tensor:
    """The BatchNorm's forward output again. In training from the batch statistics recomputed
    (one op, and bitwise the forward's output; the map is C // r channels wide)."""
    if train:
        return _aten.native_batch_norm(z, w, b, None, None, True, 0.0, eps)[0]
    return _aten.native_batch_norm(z, w, b, rm, rv, False, 0.0, eps)[0]


def _forward(k, x, mlp_w, mlp_b, conv_w, conv_b, bn_w, bn_b, bn_rm, bn_rv, bn_train,
             bn_momentum, bn_eps, dilations, product, dtype, in_place=False):  # fmt: skip
    hidden = len(mlp_w) - 1
    stats: list[Tensor] = []
    with torch.autocast(x.device.type, enabled=False):  # dtypes are chosen here, explicitly
        # The weights in the compute dtype, once: backward reuses these casts.
        mlp_wc, mlp_bc = [_cast(w, dtype) for w in mlp_w], [_cast(b, dtype) for b in mlp_b]
        conv_wc, conv_bc = [_cast(w, dtype) for w in conv_w], [_cast(b, dtype) for b in conv_b]
        pooled, r = k.pool_reduce(x, conv_wc[0], conv_bc[0])
        # The channel MLP on [B, C]: keep every value, they are tiny.
        a = _cast(pooled, dtype)
        mlp_saved = [a]
        for i in range(hidden):
            z = F.linear(a, mlp_wc[i], mlp_bc[i])
            t, mean, invstd, rm, rv = _bn(
                z, bn_w[i], bn_b[i], bn_rm[i], bn_rv[i], bn_train[i], bn_momentum[i], bn_eps[i],
                in_place,
            )
            a = t.relu_()
            mlp_saved += [z, a, mean, invstd]
            if bn_train[i] and not in_place:
                stats += [rm, rv]
        c = F.linear(a, mlp_wc[-1], mlp_bc[-1])
        # The spatial branch on C // r channels: keep r and the last dilated conv's output.
        # r channels_last: the dilated 3x3 convs after it are fastest so on a GPU.
        z = _cast(r, dtype).contiguous(memory_format=torch.channels_last)
        sp_saved = [z]
        n_bn = len(conv_w) - 1
        for j in range(n_bn):
            i = hidden + j
            t, mean, invstd, rm, rv = _bn(
                z, bn_w[i], bn_b[i], bn_rm[i], bn_rv[i], bn_train[i], bn_momentum[i], bn_eps[i],
                in_place,
            )
            a = t.relu_()
            sp_saved += [mean, invstd]
            if bn_train[i] and not in_place:
                stats += [rm, rv]
            if j + 1 < n_bn:
                d = dilations[j]
                z = F.conv2d(a, conv_wc[j + 1], conv_bc[j + 1], 1, d, d)
        sp_saved.append(z)  # the last dilated conv's output (r itself if there is none)
        s = F.conv2d(a, conv_wc[-1], conv_bc[-1])
        y = k.gate_forward(x, c, s, product)
    # One output for the new running statistics (fewer outputs, less work for the compiler).
    packed = None if in_place else torch.cat(stats) if stats else _empty_stats(x)
    return y, [c, s, *mlp_saved, *sp_saved], packed, [*mlp_wc, *conv_wc, *conv_bc]


@torch.library.custom_op("torch_bam::bam_block_cuda", mutates_args=())
def _block_op(
    x: Tensor,
    mlp_w: list[Tensor],
    mlp_b: list[Tensor],
    conv_w: list[Tensor],
    conv_b: list[Tensor],
    bn_w: list[Tensor],
    bn_b: list[Tensor],
    bn_rm: list[Tensor],
    bn_rv: list[Tensor],
    bn_train: list[bool],
    bn_momentum: list[float],
    bn_eps: list[float],
    dilations: list[int],
    product: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, list[Tensor], Tensor]:
    """y, the tensors backward needs, and the new running (mean, var) of each BatchNorm in
    training mode, concatenated. ``dtype``: the narrow branch's compute dtype (autocast's, else
    x's)."""
    y, saved, packed, _ = _forward(_kernels(), x, mlp_w, mlp_b, conv_w, conv_b, bn_w, bn_b,
                                   bn_rm, bn_rv, bn_train, bn_momentum, bn_eps, dilations,
                                   product, dtype)  # fmt: skip
    # (The casts alias the weights: an op may not return them.) y in x's layout, as the fake
    # says (the kernels write it so; a no-op).
    return y.contiguous(memory_format=_format(x)), saved, packed


@_block_op.register_fake
def _(*args):
    return _forward(_FakeKernels, *args)[:3]


def _backward(k, dy, x, saved, mlp_w, conv_w, conv_b, bn_w, bn_b, bn_rm, bn_rv, bn_train, bn_eps,
              dilations, product, dtype, need_x, need_wr):  # fmt: skip
    hidden, n_bn = len(mlp_w) - 1, len(conv_w) - 1
    n_cast = len(mlp_w) + 2 * len(conv_w)
    saved, casts = saved[: len(saved) - n_cast], saved[len(saved) - n_cast :]
    mlp_wc, conv_wc = casts[: hidden + 1], casts[hidden + 1 : -n_bn - 1]
    conv_bc = casts[-n_bn - 1 :]
    c, s = saved[0], saved[1]
    mlp_saved = saved[2 : 3 + 4 * hidden]
    r, sp_stats, z_last = saved[3 + 4 * hidden], saved[4 + 4 * hidden : -1], saved[-1]
    dy = dy.contiguous(memory_format=_format(x))
    mask3 = [True, True, True]
    with torch.autocast(x.device.type, enabled=False):
        dc, ds = k.gate_backward_reduce(dy, x, c, s, product)
        # The channel MLP, last layer first.
        mlp_dw: list = [None] * (hidden + 1)
        mlp_db: list = [None] * (hidden + 1)
        bn_dw: list = [None] * len(bn_w)
        bn_db: list = [None] * len(bn_w)
        da = _cast(dc, dtype)
        dpool = None
        for i in range(hidden, -1, -1):
            a_in = mlp_saved[4 * i - 2] if i > 0 else mlp_saved[0]
            mlp_dw[i] = _cast(da.t().mm(a_in), mlp_w[i].dtype)
            mlp_db[i] = da.sum(0, dtype=mlp_w[i].dtype)
            if i == 0 and not need_x:
                break
            da = da.mm(mlp_wc[i])
            if i == 0:
                dpool = da
                break
            z, a, mean, invstd = mlp_saved[4 * i - 3 : 4 * i + 1]
            j = i - 1
            dz = _aten.threshold_backward(da, a, 0)
            da, bn_dw[j], bn_db[j] = _aten.native_batch_norm_backward(
                dz, z, bn_w[j], bn_rm[j], bn_rv[j], mean, invstd, bn_train[j], bn_eps[j], mask3
            )
        # The spatial branch: recompute what lies between r and the last dilated conv's output.
        zs, acts = [r], []
        for j in range(n_bn):
            i = hidden + j
            t = _bn_again(zs[j], bn_w[i], bn_b[i], bn_rm[i], bn_rv[i], bn_train[i], bn_eps[i])
            acts.append(t.relu_())
            if j + 1 == n_bn - 1:
                zs.append(z_last)
            elif j + 1 < n_bn:
                d = dilations[j]
                zs.append(F.conv2d(acts[j], conv_wc[j + 1], conv_bc[j + 1], 1, d, d))
        conv_dw: list = [None] * (n_bn + 1)
        conv_db: list = [None] * (n_bn + 1)
        wf = conv_w[-1]
        # The final conv's bias grad from the float32 dM_s: it is a sum over the whole batch.
        da, conv_dw[-1], conv_db[-1] = _conv_backward(_cast(ds, dtype), acts[-1], wf, conv_wc[-1],
                                                      0, ds)  # fmt: skip
        for j in range(n_bn - 1, -1, -1):
            i = hidden + j
            mean, invstd = sp_stats[2 * j], sp_stats[2 * j + 1]
            dz = _aten.threshold_backward(da, acts[j], 0)
            dz, bn_dw[i], bn_db[i] = _aten.native_batch_norm_backward(
                dz, zs[j], bn_w[i], bn_rm[i], bn_rv[i], mean, invstd, bn_train[i], bn_eps[i],
                mask3,
            )
            if j > 0:
                w, d = conv_w[j], dilations[j - 1]
                da, conv_dw[j], conv_db[j] = _conv_backward(dz, acts[j - 1], w, conv_wc[j], d)
        dr = dz
        wr = conv_w[0]
        conv_db[0] = _cast(dr.sum((0, 2, 3), dtype=torch.float32), wr.dtype)
        if need_wr:
            conv_dw[0] = _cast(k.reduce_weight_grad(x, dr).reshape(wr.shape), wr.dtype)
        dx = None
        if need_x:
            dx = k.gate_backward_dx(dy, c, s, product, w_reduce=wr, dr=dr, dpool=dpool)
    return dx, mlp_dw, mlp_db, conv_dw, conv_db, bn_dw, bn_db


def _conv_backward(dz: Tensor, inp: Tensor, w: Tensor, wc: Tensor, d: int, dz_bias=None):
    """(d input, d weight, d bias) of a stride-1 conv with padding = dilation = d (``wc``: the
    weight ``w`` in the compute dtype); the weight's grads in w's dtype (under autocast the
    bias's summed straight into it from ``dz_bias``, default ``dz``: one op, not two)."""
    same = w.dtype == wc.dtype
    da, dw, db = _aten.convolution_backward(
        dz, inp, wc, [w.shape[0]], [1, 1], [d, d], [max(d, 1)] * 2, False, [0, 0],
        1, [True, True, same],
    )  # fmt: skip
    if not same:
        db = (dz if dz_bias is None else dz_bias).sum((0, 2, 3), dtype=w.dtype)
    return da, _cast(dw, w.dtype), db


_GRADS = tuple[Tensor, list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor],
               list[Tensor]]  # fmt: skip


@torch.library.custom_op("torch_bam::bam_block_cuda_backward", mutates_args=())
def _block_backward_op(
    dy: Tensor,
    x: Tensor,
    saved: list[Tensor],
    mlp_w: list[Tensor],
    conv_w: list[Tensor],
    conv_b: list[Tensor],
    bn_w: list[Tensor],
    bn_b: list[Tensor],
    bn_rm: list[Tensor],
    bn_rv: list[Tensor],
    bn_train: list[bool],
    bn_eps: list[float],
    dilations: list[int],
    product: bool,
    dtype: torch.dtype,
    need_x: bool,
    need_wr: bool,
) -> _GRADS:
    """dx (empty unless need_x) and the grads of the weights, in the forward op's lists."""
    grads = _backward(_kernels(), dy, x, saved, mlp_w, conv_w, conv_b, bn_w, bn_b, bn_rm, bn_rv,
                      bn_train, bn_eps, dilations, product, dtype, need_x, need_wr)  # fmt: skip
    return _no_none(x, grads)


@_block_backward_op.register_fake
def _(dy, x, *args):
    return _no_none(x, _backward(_FakeKernels, dy, x, *args))


def _no_none(x: Tensor, grads):
    """The op's outputs: an empty tensor for a grad not computed (the schema has no optional
    tensors), and fixed layouts -- the compiler takes the fake implementation's strides for
    the real ones (cuDNN may give a channels_last weight grad where the meta function says
    contiguous)."""
    dx, *lists = grads

    def fill(g):
        return x.new_empty((0,)) if g is None else g.contiguous()  # one each: no aliasing

    dx = x.new_empty((0,)) if dx is None else dx.contiguous(memory_format=_format(x))
    return (dx, *[[fill(g) for g in gs] for gs in lists])


def _forward_any(*args):
    """The forward op under torch.compile (an opaque node with a fake implementation), else
    its implementation directly (a custom op's Python dispatch costs host time in eager)."""
    if torch.compiler.is_compiling():
        y, saved, packed = _block_op(*args)
        mlp_w, conv_w, conv_b, dtype = args[1], args[3], args[4], args[-1]
        casts = [_cast(w, dtype) for w in [*mlp_w, *conv_w, *conv_b]]
        return y, saved + casts, packed
    y, saved, _, casts = _forward(_kernels(), *args, in_place=True)
    return y, saved + casts, None


def _backward_any(*args):
    if torch.compiler.is_compiling():
        return _block_backward_op(*args)
    return _backward(_kernels(), *args)


def _split(t, sizes):
    out, i = [], 0
    for n in sizes:
        out.append(list(t[i : i + n]))
        i += n
    return out


class _BlockFunction(torch.autograd.Function):
    """One autograd node per block. (Not ``register_autograd`` on the op: that wraps each of
    the op's ~20 tensor inputs and ~17 outputs in extra detach calls, forward and backward, and
    would make the saved tensors outputs of the op.)"""

    @staticmethod
    def forward(ctx, spec, x: Tensor, *tensors: Tensor):
        n_mlp, n_conv, n_bn, bn_train, bn_momentum, bn_eps, dilations, product, dtype = spec
        mlp_w, mlp_b, conv_w, conv_b, bn_w, bn_b, bn_rm, bn_rv = _split(
            tensors, [n_mlp, n_mlp, n_conv, n_conv, n_bn, n_bn, n_bn, n_bn]
        )
        y, saved, packed = _forward_any(
            x, mlp_w, mlp_b, conv_w, conv_b, bn_w, bn_b, bn_rm, bn_rv, list(bn_train),
            list(bn_momentum), list(bn_eps), list(dilations), product, dtype,
        )  # fmt: skip
        hidden = n_mlp - 1
        stats = [saved[5 + 4 * i : 7 + 4 * i] for i in range(hidden)]
        sp_stats = saved[4 + 4 * hidden : len(saved) - n_mlp - 2 * n_conv - 1]
        stats += [sp_stats[2 * j : 2 * j + 2] for j in range(n_conv - 1)]
        # Running statistics only of BatchNorms in eval mode: the others are updated after this
        # function (and their backward reads the batch statistics instead).
        rm = [m if not t else st[0] for m, t, st in zip(bn_rm, bn_train, stats, strict=True)]
        rv = [v if not t else st[1] for v, t, st in zip(bn_rv, bn_train, stats, strict=True)]
        ctx.save_for_backward(x, *saved, *mlp_w, *conv_w, *conv_b, *bn_w, *bn_b, *rm, *rv)
        ctx.spec, ctx.n_saved = spec, len(saved)
        if packed is None:  # eager: the running statistics were updated in place
            return y
        ctx.mark_non_differentiable(packed)
        return y, packed

    @staticmethod
    def backward(ctx, dy: Tensor, _dpacked=None):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "torch_bam: the CUDA block path does not support second-order gradients "
                "(backward with create_graph=True). Run the block on the plain path for that: "
                'torch_bam.functional.set_backend("reference").'
            )
        n_mlp, n_conv, n_bn, bn_train, _, bn_eps, dilations, product, dtype = ctx.spec
        t = ctx.saved_tensors
        x, saved = t[0], list(t[1 : 1 + ctx.n_saved])
        mlp_w, conv_w, conv_b, bn_w, bn_b, rm, rv = _split(
            t[1 + ctx.n_saved :], [n_mlp, n_conv, n_conv, n_bn, n_bn, n_bn, n_bn]
        )
        need_x = ctx.needs_input_grad[1]
        need_wr = ctx.needs_input_grad[2 + 2 * n_mlp]
        dx, mlp_dw, mlp_db, conv_dw, conv_db, bn_dw, bn_db = _backward_any(
            dy, x, saved, mlp_w, conv_w, conv_b, bn_w, bn_b, rm, rv, list(bn_train),
            list(bn_eps), list(dilations), product, dtype, need_x, need_wr,
        )  # fmt: skip
        conv_dw = list(conv_dw)
        if not need_wr:
            conv_dw[0] = None
        return (None, dx if need_x else None, *mlp_dw, *mlp_db, *conv_dw, *conv_db, *bn_dw,
                *bn_db, *[None] * (2 * n_bn))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The block


def block_forward(block: nn.Module, x: Tensor, layers) -> Tensor:
    """``block(x)`` through the CUDA ops (training or inference); ``layers`` is what
    :func:`plan` returned for it (not None)."""
    mlp, sp = layers
    lins, convs = mlp[0::3], sp[0::3]
    bns = mlp[1::3] + sp[1::3]
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    spec = (
        len(lins),
        len(convs),
        len(bns),
        tuple(m.training for m in bns),
        tuple(0.0 if m.momentum is None else float(m.momentum) for m in bns),
        tuple(float(m.eps) for m in bns),
        tuple(m.dilation[0] for m in convs[1:-1]),
        block.combine == "product",
        dtype,
    )
    tensors = [m.weight for m in lins] + [m.bias for m in lins]
    tensors += [m.weight for m in convs] + [m.bias for m in convs]
    tensors += [m.weight for m in bns] + [m.bias for m in bns]
    tensors += [m.running_mean for m in bns] + [m.running_var for m in bns]
    out = _BlockFunction.apply(spec, x, *tensors)
    trained = [m for m in bns if m.training]
    if trained:
        with torch.no_grad():
            if isinstance(out, tuple):  # compiled: the op gave the new running statistics
                out, packed = out
                buffers = [b for m in trained for b in (m.running_mean, m.running_var)]
                torch._foreach_copy_(buffers, packed.split([b.numel() for b in buffers]))
            torch._foreach_add_([m.num_batches_tracked for m in trained], 1)
    elif isinstance(out, tuple):
        out = out[0]
    return out
