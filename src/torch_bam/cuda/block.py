"""The BAM block on CUDA: one autograd node per block over two registered ops.

Why not autograd over the layers: on a GPU the block's time was host time and a tail of tiny
kernels. The plain module path launches some 50-80 kernels per block per training step (the
seed's block as many), the CPU room's memory-saving autograd (torch_bam.cpu.block) recomputes
layers with nested ``autograd.grad`` calls. Here the block is

* ``torch_bam::bam_block_cuda`` -- the forward, a ``torch.library`` op with a fake
  implementation, so ``torch.compile(fullgraph=True)`` traces through it as one opaque node;
* ``torch_bam::bam_block_cuda_backward`` -- its backward, another opaque op, which calls the
  ATen backward ops of the spatial branch directly (``native_batch_norm_backward``,
  ``convolution_backward``, ``threshold_backward``) and the Triton kernels of
  ``torch_bam.cuda.kernels`` for everything else;
* ``_BlockFunction`` -- the autograd node joining them. Under torch.compile it calls the ops;
  in eager mode it calls their implementations directly (a custom op's Python dispatch costs
  host time).

What the ops take and keep is named (:class:`_Spec`, :class:`_Params`, :class:`_Weights`,
:class:`_Saved`), flattened for the ops' ``Tensor[]`` arguments by :func:`_flat` / :func:`_of`.

The launches of one training step (forward + backward), at C = 256, r = 16:

    forward   _foreach_copy_        the weights in the compute dtype (the reduce conv's in
                                    x's), once per step (nothing under fp32)
              zeros                 the kernels' counters, kept for backward
              pool_reduce           reads x: the pooled vector (finished in the kernel) and the
                                    1x1 reduce in one pass
              mlp_forward           the channel MLP, BatchNorm1d statistics and running
                                    statistics included, one program
              3 x (native_batch_norm, relu_), 2 dilated convs, the final 1x1 conv (ATen/cuDNN)
              gate_forward          reads x, writes y
              _foreach_add_         num_batches_tracked of every trained BatchNorm
    backward  gate_backward_reduce  reads x, dy: dM_c, dM_s (finished in the kernel)
              mlp_backward          the channel MLP's grads and dpool, one program
              3 x (convolution_backward, threshold_backward, native_batch_norm_backward)
              sum, convolution_backward
                                    the reduce conv's bias and weight grads (the weight's as
                                    the plain conv's: cuDNN, TF32 where cudnn.allow_tf32)
              gate_backward_dx      reads dy, writes dx = dy (1 + g) + W_r^T dr + dpool / HW
              _foreach_copy_        grads into their parameters' dtypes and layouts, one launch

Counted under the Triton interpreter by tests/cuda/test_block.py (tests/cuda/launches.py: ATen
ops that launch kernels, each as one, plus Triton launches; a GPU launches a few more inside
cuDNN and some ATen ops), per block step, the seed's block / this path at commit 84c9c32,
before the cast cache, the in-kernel finishing and the MLP kernels / now
(``TRITON_INTERPRET=1 PYTHONPATH=src python -m tests.cuda.launches`` prints the first and
last columns):

    fp32, NCHW            50 / 49 / 29        bf16 autocast, NCHW            74 / 73 / 30
    fp32, channels_last   53 / 46 / 29        bf16 autocast, channels_last   77 / 70 / 30

(the last column includes the per-step counters' ``zeros``, one launch).

Saved for backward: ``x``, every input of the spatial branch's BatchNorms and every output of
its ReLUs (six ``C // r``-channel maps at two dilated convs), the channel MLP's [B, C]-sized
values and the batch statistics: about 1.39x the input's bytes at r = 16 (tests/cuda/
test_block.py bounds it at 1.4x). Nothing is recomputed in backward: recomputing the maps
between two kept ones cost 7 more launches a step, for 0.25x of x.

BatchNorm running statistics: in eager mode ``native_batch_norm`` (and ``mlp_forward``)
updates the buffers in place, as the plain path does; under torch.compile the (functional)
forward op returns updated copies, which :func:`block_forward` copies into the buffers with
one ``_foreach_copy_``. Batch statistics stay in the dtype the device's batch-norm kernels give
and take (:func:`_stats_dtype`), so ``.half()`` / ``.bfloat16()`` models train here too.

Second-order gradients are not supported: backward with ``create_graph=True`` raises a
RuntimeError that names the fix.

All the work runs on CUDA tensors; with ``torch_bam.functional.set_backend("triton")`` and
``TRITON_INTERPRET=1`` it also runs on CPU tensors, which is how CI tests it.
"""

from __future__ import annotations

from typing import NamedTuple

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


def _global_hooks() -> bool:
    """Hooks registered for every module (``nn.modules.module.register_module_*_hook``)."""
    g = nn.modules.module
    return bool(g._global_forward_hooks or g._global_forward_pre_hooks
                or g._global_backward_hooks or g._global_backward_pre_hooks)  # fmt: skip


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
    if _global_hooks():
        return None  # they would see every layer's call: the plain path makes them
    if not all(map(_plain_layer, (channel, spatial, channel.gate_c, spatial.gate_s))):
        return None  # hooks on a gate (record_attention) or its Sequential
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
    builds (no hooks, on them or global; biases present; affine BatchNorms with running
    statistics and a momentum)."""
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return None
    if not _kernels().supported(x):
        return None
    return _structure(block)


# ---------------------------------------------------------------------------------------------
# What the ops take and keep, by name


class _Spec(NamedTuple):
    """The block's configuration (no tensors): one entry per BatchNorm (channel MLP first,
    then the spatial branch), one dilation per dilated conv."""

    bn_train: tuple[bool, ...]
    bn_momentum: tuple[float, ...]
    bn_eps: tuple[float, ...]
    dilations: tuple[int, ...]
    product: bool
    dtype: torch.dtype  # the narrow branch's compute dtype (autocast's, else x's)

    @property
    def n_conv(self) -> int:  # reduce 1x1, the dilated 3x3s, final 1x1
        return len(self.dilations) + 2

    @property
    def n_sp(self) -> int:  # BatchNorms of the spatial branch
        return self.n_conv - 1

    @property
    def hidden(self) -> int:  # hidden layers of the channel MLP
        return len(self.bn_train) - self.n_sp


def _sizes(fields, spec: _Spec) -> list[int]:
    n = {"lin": spec.hidden + 1, "conv": spec.n_conv, "bn": len(spec.bn_train),
         "hid": spec.hidden, "sp": spec.n_sp, "one": 1}  # fmt: skip
    return [n[f.split("_")[0]] for f in fields]


def _flat(group) -> list[Tensor]:
    """A NamedTuple of tensor lists (below) as one list, for the ops' ``Tensor[]``."""
    return [t for g in group for t in g]


def _of(cls, flat, spec: _Spec):
    """The NamedTuple ``cls`` back from :func:`_flat`'s list (its lists' sizes from spec)."""
    out, i = [], 0
    for n in _sizes(cls._fields, spec):
        out.append(list(flat[i : i + n]))
        i += n
    assert i == len(flat), (i, len(flat))
    return cls(*out)


class _Params(NamedTuple):
    """The block's parameters and BatchNorm buffers (the modules' own tensors)."""

    lin_w: list[Tensor]
    lin_b: list[Tensor]
    conv_w: list[Tensor]
    conv_b: list[Tensor]
    bn_w: list[Tensor]
    bn_b: list[Tensor]
    bn_rm: list[Tensor]
    bn_rv: list[Tensor]


class _Weights(NamedTuple):
    """The weights in the compute dtype, cast once per step (see :func:`_weights`), but the
    reduce conv's: its weight in x's dtype, which its kernels read it in (they read it many
    times a pass: in bf16 half the bytes), and its bias as it is (added in float32)."""

    lin_w: list[Tensor]
    lin_b: list[Tensor]
    conv_w: list[Tensor]
    conv_b: list[Tensor]


class _Saved(NamedTuple):
    """What forward keeps for backward: the gate logits, every layer's input to the narrow
    branch's BatchNorms and ReLUs (no recomputation in backward: launches cost more than
    these C // r-channel maps), and each BatchNorm's batch statistics (its running ones when
    it is frozen)."""

    one_c: list[Tensor]  # M_c [B, C]
    one_s: list[Tensor]  # M_s [B, 1, H, W]
    lin_in: list[Tensor]  # each Linear's input: the pooled vector, then the ReLU outputs
    hid_z: list[Tensor]  # each hidden Linear's output (its BatchNorm's input)
    sp_z: list[Tensor]  # each spatial BatchNorm's input: r, then the dilated convs' outputs
    sp_a: list[Tensor]  # each spatial ReLU's output
    bn_mean: list[Tensor]
    bn_invstd: list[Tensor]  # (running_mean, running_var) in these two for a frozen BN
    one_tickets: list[Tensor]  # the kernels' counters (kernels.counters), zero between calls


class _FakeKernels:
    """Shapes, dtypes and layouts of the kernels' outputs, for the ops' fake implementations
    (the same code as the real ones then runs on fake tensors, so both always agree)."""

    @staticmethod
    def counters(x):
        return x.new_zeros((x.shape[0],), dtype=torch.int32)

    @staticmethod
    def pool_reduce(x, w_reduce, b_reduce=None, pooled_dtype=torch.float32, tickets=None):
        b, c, h, w = x.shape
        r = x.new_empty((b, w_reduce.shape[0], h, w)).contiguous(memory_format=torch.channels_last)
        return x.new_empty((b, c), dtype=pooled_dtype), r

    @staticmethod
    def gate_forward(x, c, s, product):
        return torch.empty_like(x, memory_format=_format(x))

    @staticmethod
    def gate_backward_reduce(dy, x, c, s, product, out_dtype=torch.float32, tickets=None):
        b, ch, h, w = x.shape
        return x.new_empty((b, ch), dtype=out_dtype), x.new_empty((b, 1, h, w), dtype=out_dtype)

    @staticmethod
    def gate_backward_dx(dy, c, s, product, w_reduce=None, dr=None, dpool=None):
        return torch.empty_like(dy, memory_format=_format(dy))

    @staticmethod
    def reduce_weight_grad(x, dr, out_dtype=torch.float32):
        return x.new_empty((dr.shape[1], x.shape[1]), dtype=out_dtype)

    @staticmethod
    def mlp_forward(pooled, w1, b1, gamma, beta, rm, rv, w2, b2, train, momentum, eps):
        (b, ch), hid = pooled.shape, w1.shape[0]
        stats = [pooled.new_empty((hid,), dtype=torch.float32) for _ in range(2)]
        return pooled.new_empty((b, hid)), pooled.new_empty((b, hid)), *stats, pooled.new_empty(
            (b, ch)
        )  # fmt: skip

    @staticmethod
    def mlp_backward(dc, pooled, z, a, mean, invstd, gamma, w1, w2, train, need_dpool, b1, beta,
                     b2):  # fmt: skip
        grads = [torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (w1, b1, gamma, beta, w2, b2)]  # fmt: skip
        return (*grads, torch.empty_like(pooled) if need_dpool else None)


# ---------------------------------------------------------------------------------------------
# The maths


def _format(x: Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)  # no dispatch when nothing changes


def _stats_dtype(z: Tensor, w: Tensor) -> torch.dtype:
    """The dtype of the batch statistics that the device's native_batch_norm gives and its
    backward takes: float32 on CUDA; on CPU the BatchNorm's parameters' dtype (float32 under
    autocast, the model's for a ``.half()`` / ``.bfloat16()`` model). The meta function says
    x's dtype on CPU, so the ops cast to this one for their fake and real outputs to agree."""
    return torch.float32 if z.device.type == "cuda" else w.dtype


def _bn_relu(z: Tensor, p: _Params, i: int, spec: _Spec, in_place: bool):
    """ReLU(BatchNorm i (z)) as nn.BatchNorm runs it, with what its backward needs. In training
    it updates the running statistics in place (eager), or copies of them that are returned
    updated (the functional op: the last two values, else None)."""
    w, b, rm, rv = p.bn_w[i], p.bn_b[i], p.bn_rm[i], p.bn_rv[i]
    if spec.bn_train[i]:
        if not in_place:
            rm, rv = rm.clone(), rv.clone()
        t, mean, invstd = _aten.native_batch_norm(z, w, b, rm, rv, True, spec.bn_momentum[i],
                                                  spec.bn_eps[i])  # fmt: skip
        dt = _stats_dtype(z, w)
        new = None if in_place else (rm, rv)
        return t.relu_(), _cast(mean, dt), _cast(invstd, dt), new
    t = _aten.native_batch_norm(z, w, b, rm, rv, False, 0.0, spec.bn_eps[i])[0]
    return t.relu_(), rm, rv, None


def _forward(k, x: Tensor, p: _Params, wc: _Weights, spec: _Spec, in_place: bool):
    """(y, saved, new running statistics concatenated or None)."""
    dtype, hidden = spec.dtype, spec.hidden
    lin_in, hid_z, sp_z, sp_a, mean, invstd, new = [], [], [], [], [], [], []

    def bn(z, i):
        a, m, v, upd = _bn_relu(z, p, i, spec, in_place)
        mean.append(m)
        invstd.append(v)
        if upd is not None:
            new.extend(upd)
        return a

    with torch.autocast(x.device.type, enabled=False):  # dtypes are chosen here, explicitly
        # One pass over x: the pooled vector (finished in the kernel, in the compute dtype)
        # and the 1x1 reduce, its weight in x's dtype (cast with the others, _weights).
        # The counters are made here, once a step, and kept for backward (back at zero after
        # each kernel): per step, not per module, so CUDA graphs own them like any activation.
        tickets = k.counters(x)
        a, r = k.pool_reduce(x, wc.conv_w[0], p.conv_b[0], pooled_dtype=dtype, tickets=tickets)
        if _mlp_fused(x, p, spec):  # the channel MLP on [B, C], in one launch
            rm, rv = p.bn_rm[0], p.bn_rv[0]
            if spec.bn_train[0] and not in_place:
                rm, rv = rm.clone(), rv.clone()
                new += [rm, rv]
            z, a1, m, v, c = k.mlp_forward(
                a, p.lin_w[0], p.lin_b[0], p.bn_w[0], p.bn_b[0], rm, rv, p.lin_w[1], p.lin_b[1],
                spec.bn_train[0], spec.bn_momentum[0], spec.bn_eps[0],
            )  # fmt: skip
            lin_in, hid_z, mean, invstd = [a, a1], [z], [m], [v]
        else:  # any depth, layer by layer
            for i in range(hidden):
                lin_in.append(a)
                hid_z.append(F.linear(a, wc.lin_w[i], wc.lin_b[i]))
                a = bn(hid_z[-1], i)
            lin_in.append(a)
            c = F.linear(a, wc.lin_w[-1], wc.lin_b[-1])
        # The spatial branch on C // r channels, channels_last (pool_reduce writes r so).
        z = _cast(r, dtype)
        for j in range(spec.n_sp):
            sp_z.append(z)
            sp_a.append(bn(z, hidden + j))
            if j + 1 < spec.n_sp:
                d = spec.dilations[j]
                z = F.conv2d(sp_a[-1], wc.conv_w[j + 1], wc.conv_b[j + 1], 1, d, d)
        s = F.conv2d(sp_a[-1], wc.conv_w[-1], wc.conv_b[-1])
        y = k.gate_forward(x, c, s, spec.product)
    saved = _Saved([c], [s], lin_in, hid_z, sp_z, sp_a, mean, invstd, [tickets])
    packed = None if in_place else torch.cat(new) if new else x.new_empty((0,), dtype=torch.float32)
    return y, saved, packed


def _mlp_fused(x: Tensor, p: _Params, spec: _Spec) -> bool:
    """Whether the channel MLP runs as one kernel forward and one backward: one hidden layer
    of at most MLP_MAX_HIDDEN units, and not a batch of one in training (where BatchNorm1d
    raises, as the plain path then does)."""
    return (
        spec.hidden == 1
        and p.lin_w[0].shape[0] <= _kernels().MLP_MAX_HIDDEN
        and (x.shape[0] > 1 or not spec.bn_train[0])
    )


def _conv_backward(dz: Tensor, inp: Tensor, wc: Tensor, d: int):
    """(d input, d weight, d bias) of a stride-1 conv with padding = dilation = d, in the
    compute dtype (``wc``: the weight in it)."""
    return _aten.convolution_backward(
        dz, inp, wc, [wc.shape[0]], [1, 1], [d, d], [max(d, 1)] * 2, False, [0, 0], 1,
        [True, True, True],
    )  # fmt: skip


def _backward(k, dy: Tensor, x: Tensor, sv: _Saved, p: _Params, wc: _Weights, spec: _Spec,
              need_x: bool, need_wr: bool):  # fmt: skip
    """dx (None unless need_x) and the parameters' grads as a _Params-shaped list of lists
    (None for the buffers, and for the reduce conv's weight unless need_wr)."""
    hidden, dtype = spec.hidden, spec.dtype
    g = _Params(*[[None] * len(group) for group in p])
    dy = dy.contiguous(memory_format=_format(x))
    c, s = sv.one_c[0], sv.one_s[0]

    def bn_backward(da, a, z, i):
        # Frozen: the running statistics were saved in mean/invstd's places.
        m, v = sv.bn_mean[i], sv.bn_invstd[i]
        train = spec.bn_train[i]
        dz = _aten.threshold_backward(da, a, 0)
        dz, g.bn_w[i], g.bn_b[i] = _aten.native_batch_norm_backward(
            dz, z, p.bn_w[i], None if train else m, None if train else v, m if train else None,
            v if train else None, train, spec.bn_eps[i], [True, True, True],
        )  # fmt: skip
        return dz

    with torch.autocast(x.device.type, enabled=False):
        dc, ds = k.gate_backward_reduce(dy, x, c, s, spec.product, out_dtype=dtype,
                                        tickets=sv.one_tickets[0])  # fmt: skip
        # The channel MLP, last layer first.
        da, dpool = dc, None
        if _mlp_fused(x, p, spec):
            *grads, dpool = k.mlp_backward(
                dc, sv.lin_in[0], sv.hid_z[0], sv.lin_in[1], sv.bn_mean[0], sv.bn_invstd[0],
                p.bn_w[0], p.lin_w[0], p.lin_w[1], spec.bn_train[0], need_x, p.lin_b[0],
                p.bn_b[0], p.lin_b[1],
            )  # fmt: skip
            g.lin_w[0], g.lin_b[0], g.bn_w[0], g.bn_b[0], g.lin_w[1], g.lin_b[1] = grads
        else:  # layer by layer
            for i in range(hidden, -1, -1):
                g.lin_w[i] = da.t().mm(sv.lin_in[i])
                g.lin_b[i] = da.sum(0, dtype=p.lin_b[i].dtype)
                if i == 0 and not need_x:
                    break
                da = da.mm(wc.lin_w[i])
                if i == 0:
                    dpool = da
                    break
                da = bn_backward(da, sv.lin_in[i], sv.hid_z[i - 1], i - 1)
        # The spatial branch, final conv first.
        da, g.conv_w[-1], g.conv_b[-1] = _conv_backward(ds, sv.sp_a[-1], wc.conv_w[-1], 0)
        for j in range(spec.n_sp - 1, -1, -1):
            dz = bn_backward(da, sv.sp_a[j], sv.sp_z[j], hidden + j)
            if j > 0:
                da, g.conv_w[j], g.conv_b[j] = _conv_backward(
                    dz, sv.sp_a[j - 1], wc.conv_w[j], spec.dilations[j - 1]
                )
        dr, wr = dz, wc.conv_w[0]
        g.conv_b[0] = dr.sum((0, 2, 3), dtype=p.conv_b[0].dtype)
        if need_wr:
            g.conv_w[0] = k.reduce_weight_grad(x, dr, out_dtype=dr.dtype).reshape(wr.shape)
        dx = None
        if need_x:
            dx = k.gate_backward_dx(dy, c, s, spec.product, w_reduce=wr, dr=dr, dpool=dpool)
        _to_param_dtypes(g, p)
    return dx, g


def _to_param_dtypes(g: _Params, p: _Params) -> None:
    """Grads into their parameters' dtypes and layouts (autograd would otherwise cast, or copy
    to the parameter's strides, each one separately): one ``_foreach_copy_`` for all."""
    src, dst, where = [], [], []
    for gi, (grads, params) in enumerate(zip(g, p, strict=True)):
        for j, (t, q) in enumerate(zip(grads, params, strict=True)):
            if t is not None and (t.dtype != q.dtype or t.stride() != q.stride()):
                src.append(t)
                dst.append(torch.empty_like(q, memory_format=torch.preserve_format))
                where.append((gi, j))
    if src:
        torch._foreach_copy_(dst, src)
        for (gi, j), t in zip(where, dst, strict=True):
            g[gi][j] = t


# ---------------------------------------------------------------------------------------------
# The ops (for torch.compile: opaque nodes with fake implementations)


@torch.library.custom_op("torch_bam::bam_block_cuda", mutates_args=())
def _block_op(
    x: Tensor,
    params: list[Tensor],
    weights: list[Tensor],
    bn_train: list[bool],
    bn_momentum: list[float],
    bn_eps: list[float],
    dilations: list[int],
    product: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, list[Tensor], Tensor]:
    """y, the _Saved tensors, and the new running (mean, var) of each BatchNorm in training
    mode, concatenated. The lists are _Params / _Weights flattened; the scalars are _Spec's."""
    spec = _Spec(tuple(bn_train), tuple(bn_momentum), tuple(bn_eps), tuple(dilations), product,
                 dtype)  # fmt: skip
    y, saved, packed = _forward(_kernels(), x, _of(_Params, params, spec),
                                _of(_Weights, weights, spec), spec, in_place=False)  # fmt: skip
    # Fresh tensors only (an op's outputs may not alias its inputs: a frozen BN's running
    # statistics are saved as they are). y in x's layout, as the fake says.
    flat = [t.clone() if _aliases(t, params) else t for t in _flat(saved)]
    return y.contiguous(memory_format=_format(x)), flat, packed


def _aliases(t: Tensor, inputs: list[Tensor]) -> bool:
    return any(t is u for u in inputs)


@_block_op.register_fake
def _(x, params, weights, bn_train, bn_momentum, bn_eps, dilations, product, dtype):
    spec = _Spec(tuple(bn_train), tuple(bn_momentum), tuple(bn_eps), tuple(dilations), product,
                 dtype)  # fmt: skip
    y, saved, packed = _forward(_FakeKernels, x, _of(_Params, params, spec),
                                _of(_Weights, weights, spec), spec, in_place=False)  # fmt: skip
    flat = [t.clone() if _aliases(t, params) else t for t in _flat(saved)]
    return y, flat, packed


@torch.library.custom_op("torch_bam::bam_block_cuda_backward", mutates_args=())
def _block_backward_op(
    dy: Tensor,
    x: Tensor,
    saved: list[Tensor],
    params: list[Tensor],
    weights: list[Tensor],
    bn_train: list[bool],
    bn_momentum: list[float],
    bn_eps: list[float],
    dilations: list[int],
    product: bool,
    dtype: torch.dtype,
    need_x: bool,
    need_wr: bool,
) -> tuple[Tensor, list[Tensor]]:
    """dx (empty unless need_x) and the parameters' grads, _Params flattened (empty tensors
    for the buffers and for grads not computed: the schema has no optional tensors)."""
    return _backward_impl(_kernels(), dy, x, saved, params, weights, bn_train, bn_momentum, bn_eps,
                          dilations, product, dtype, need_x, need_wr)  # fmt: skip


@_block_backward_op.register_fake
def _(*args):
    return _backward_impl(_FakeKernels, *args)


def _backward_impl(k, dy, x, saved, params, weights, bn_train, bn_momentum, bn_eps, dilations,
                   product, dtype, need_x, need_wr):  # fmt: skip
    spec = _Spec(tuple(bn_train), tuple(bn_momentum), tuple(bn_eps), tuple(dilations), product,
                 dtype)  # fmt: skip
    dx, g = _backward(k, dy, x, _of(_Saved, saved, spec), _of(_Params, params, spec),
                      _of(_Weights, weights, spec), spec, need_x, need_wr)  # fmt: skip
    # Fixed layouts: the compiler takes the fake implementation's strides for the real ones
    # (cuDNN may give a channels_last weight grad where the meta function says contiguous).
    dx = x.new_empty((0,)) if dx is None else dx.contiguous(memory_format=_format(x))
    return dx, [x.new_empty((0,)) if t is None else t.contiguous() for t in _flat(g)]


# ---------------------------------------------------------------------------------------------
# The autograd node and the block


class _BlockFunction(torch.autograd.Function):
    """One autograd node per block. Under torch.compile it calls the ops; in eager mode it
    calls their implementations directly (a custom op's Python dispatch costs host time). Not
    ``register_autograd`` on the forward op: that wraps each of the op's tensor inputs and
    outputs in extra detach calls, and an op that updates BatchNorm buffers in place could not
    have one at all."""

    @staticmethod
    def forward(ctx, spec: _Spec, x: Tensor, weights: _Weights, *params: Tensor):
        p = _of(_Params, params, spec)
        if torch.compiler.is_compiling():
            y, flat, packed = _block_op(x, list(params), _flat(weights), *_op_args(spec))
            saved = _of(_Saved, flat, spec)
        else:  # eager: the running statistics are updated in place
            y, saved, packed = _forward(_kernels(), x, p, weights, spec, in_place=True)
        ctx.save_for_backward(x, *_flat(saved), *params, *_flat(weights))
        ctx.spec = spec
        if packed is None:
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
        spec = ctx.spec
        x, *rest = ctx.saved_tensors
        n_saved = sum(_sizes(_Saved._fields, spec))
        n_params = sum(_sizes(_Params._fields, spec))
        saved, params, weights = rest[:n_saved], rest[n_saved : n_saved + n_params], rest[
            n_saved + n_params :
        ]  # fmt: skip
        need_x = ctx.needs_input_grad[1]
        need_wr = ctx.needs_input_grad[3 + _param_index(spec, "conv_w")]
        if torch.compiler.is_compiling():
            dx, flat = _block_backward_op(dy, x, list(saved), list(params), list(weights),
                                          *_op_args(spec), need_x, need_wr)  # fmt: skip
            g = _of(_Params, [None if t.numel() == 0 and q.numel() else t
                            for t, q in zip(flat, params, strict=True)], spec)  # fmt: skip
        else:
            dx, g = _backward(_kernels(), dy, x, _of(_Saved, saved, spec),
                              _of(_Params, params, spec), _of(_Weights, weights, spec), spec,
                              need_x, need_wr)  # fmt: skip
        grads = _flat(g)
        if not need_wr:
            grads[_param_index(spec, "conv_w")] = None
        return None, dx if need_x else None, None, *grads


def _op_args(spec: _Spec) -> list:
    """_Spec as the ops' scalar arguments (lists where the schema has lists)."""
    return [list(v) if isinstance(v, tuple) else v for v in spec]


def _param_index(spec: _Spec, field: str) -> int:
    """Where a _Params field starts in the flat list."""
    i = _Params._fields.index(field)
    return sum(_sizes(_Params._fields[:i], spec))


def _weights(p: _Params, dtype: torch.dtype, x_dtype: torch.dtype) -> _Weights:
    """The weights in the compute dtype, but the reduce conv's weight in x's (its kernels read
    it so) and its bias as it is; cast on every forward, those not yet in their dtype, in one
    ``_foreach_copy_`` (the backward uses the forward's). Not cached across calls:
    ``p.data.mul_()``, ``p.data = ...`` and ``torch.nn.utils.vector_to_parameters`` change a
    weight's values without a new tensor or version, so no cheap key sees every change; the
    cast costs one launch and a few hundred KB per block (tests/cuda/test_block.py), against a
    stale weight's silently wrong output."""
    src = [p.lin_w, p.lin_b, p.conv_w, p.conv_b[1:]]
    want = [[dtype] * len(group) for group in src]
    want[2][0] = x_dtype
    todo = [(g, j) for g, group in enumerate(src) for j, t in enumerate(group)
            if t.dtype != want[g][j]]  # fmt: skip
    out = [list(group) for group in src]
    if todo and torch.compiler.is_compiling():  # traced: the compiler fuses the casts
        for g, j in todo:
            out[g][j] = _cast(src[g][j], want[g][j])
    elif todo:
        with torch.no_grad():
            casts = [torch.empty_like(src[g][j], dtype=want[g][j]) for g, j in todo]
            torch._foreach_copy_(casts, [src[g][j] for g, j in todo])  # one launch, same layouts
        for (g, j), t in zip(todo, casts, strict=True):
            out[g][j] = t
    lin_w, lin_b, conv_w, conv_b = out
    return _Weights(lin_w, lin_b, conv_w, [p.conv_b[0], *conv_b])


def block_forward(block: nn.Module, x: Tensor, layers) -> Tensor:
    """``block(x)`` through the CUDA ops (training or inference); ``layers`` is what
    :func:`plan` returned for it (not None)."""
    mlp, sp = layers
    lins, convs = mlp[0::3], sp[0::3]
    bns = mlp[1::3] + sp[1::3]
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    spec = _Spec(
        tuple(m.training for m in bns),
        tuple(0.0 if m.momentum is None else float(m.momentum) for m in bns),
        tuple(float(m.eps) for m in bns),
        tuple(m.dilation[0] for m in convs[1:-1]),
        block.combine == "product",
        dtype,
    )
    p = _Params(
        [m.weight for m in lins], [m.bias for m in lins], [m.weight for m in convs],
        [m.bias for m in convs], [m.weight for m in bns], [m.bias for m in bns],
        [m.running_mean for m in bns], [m.running_var for m in bns],
    )  # fmt: skip
    out = _BlockFunction.apply(spec, x, _weights(p, dtype, x.dtype), *_flat(p))
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
