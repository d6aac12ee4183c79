"""BAM's CUDA kernels (Triton): the gate forward and backward, the pool + 1x1 reduce, and the
channel MLP (one program: it works on [B, C]).

Park et al., "BAM: Bottleneck Attention Module", BMVC 2018, https://arxiv.org/abs/1807.06514

Every function takes ``x`` as ``[B, C, H, W]`` contiguous in NCHW or in channels_last, in
float16, bfloat16 or float32 (anything else: a ValueError; the caller makes views contiguous).
The small tensors (logits, weights, ``dr``, ``dpool``) may be any float dtype and layout. Maths
runs in float32 with one rounding at the end; outputs are written once, in x's dtype and memory
format (reductions in float32). No host synchronisation and no float atomics: reductions are
two-stage (per-tile partials in a float32 ``[tiles, ...]`` buffer, then a ``.sum(0)`` over the
tile axis, skipped when there is one tile).

One view serves both layouts. A map is a matrix ``[D, L]`` per image with ``L`` the contiguous
axis: NCHW is ``[C, HW]``, channels_last is ``[HW, C]``. A program owns a ``[BR, BL]`` tile of
one image (tiles never straddle images), so a per-row vector (c in NCHW, s in channels_last) and
a per-column vector (the other one) are loaded once per tile, with no per-element division:

    NCHW:           rows = channels, row vector = c, column vector = s
    channels_last:  rows = pixels,   row vector = s, column vector = c

and "sum over pixels" / "sum over channels" become a row or a column reduction.

The floor (bytes moved; ``N = B*C*H*W`` elements of ``e`` bytes, ``h = C/r``):

    gate_forward            read x, write y                         2 N e
    gate_backward (1 pass)  read dy and x, write dx                 3 N e  (+ partials, below)
    gate_backward_reduce    read dy and x                           2 N e  (+ partials)
    gate_backward_dx        read dy, write dx, read dr              2 N e + N e / r
    pool_reduce             read x, write r                         N e + N e / r  (+ partials)

Partials are ``4 B D L (1/BL + 1/BR)`` bytes, written once and read once: a fraction
``8 (1/BL + 1/BR) / e`` of one pass over x, 12.5% at 64x64 tiles in bf16, i.e. about 4% on top
of the one-pass backward's 3 N e. They are summed inside the same kernel, with no float
atomics: each program takes an int32 ticket per image after writing its partials, and the
program that takes the last one sums that image's partials in a fixed order (so the result is
the same on every run), writes the finished vector in the requested dtype and resets the
ticket. No second launch, no ``.sum(0)``. The tickets live in a small zeroed buffer made per
call (:func:`counters`; the block makes one per step and passes it from its forward to its
backward), never kept in the module: that would not be safe under CUDA graphs. On an H100 a
copy moves about 3 TB/s; the kernels aim at 0.8 of that forward and 0.7 backward
(``benchmarks/gpu.py`` measures them).

``W_r^T @ dr`` (in gate_backward_dx) and ``conv1x1(x, W_r)`` (in pool_reduce) are per-pixel
products with ``K = h`` (16..128 in BAM-ResNet-50): tl.dot on tiles padded to at least 16 (zero
padding adds nothing, so any ``K >= 1`` is exact). The dot runs in x's dtype for float16 and
bfloat16 (float32 accumulation, as cuDNN's conv does under autocast); for float32 it follows
``torch.backends.cudnn.allow_tf32``, like the convolution it replaces (and so does
:func:`reduce_weight_grad`, which is that convolution's backward), and the channel MLP's dots
follow ``torch.backends.cuda.matmul.allow_tf32``, like nn.Linear (:func:`_precision`).

Tiles are chosen by shape alone (:func:`_gate_tile`, :func:`_dx_tile`, :func:`_pool_tile`):
the same on every run, rank and machine, so the reduction order -- and so the bits of every
result -- never depends on timing. Each choice fits the shared memory per block of sm_80
(166,912 bytes), sm_89 (101,376) and sm_90 (232,448) and their registers without spills;
tests/cuda/test_kernels.py compiles every variant BAM-ResNet-50 uses for those three targets,
float32 with and without TF32 included (tests/cuda/compile_targets.py), and reads the
compiled kernels' resource use; the support gate (:mod:`torch_bam.cuda.support`) admits sm_80
to sm_90 only. The interpreter
(``TRITON_INTERPRET=1`` set before this module is imported, which runs the kernels on CPU
tensors) runs the same tiles. Loops have compile-time trip bounds (the channel counts ``C``
and ``h``, one compile per block width) or are ``while`` loops: triton 3.6's interpreter
cannot take a run-time ``range`` bound under NumPy >= 2.4. :func:`reduce_weight_grad` is the
plain conv's own weight gradient, ``aten.convolution_backward`` (cuDNN: it follows
``cudnn.allow_tf32`` as the plain layer does; it needs ``dr``, which exists only after the
gate's reductions, so it cannot share their pass over x).

Weight reads: both kernels with the 1x1 reduce read ``W_r`` in x's dtype (the block casts it
once a step with its other weights; a caller's weight in another dtype is cast per call), and
read fewer bytes of it than of x (dy) at BAM-ResNet-50's block shapes, counted under the
interpreter (tests/cuda/weight_bytes.py; ``python -m tests.cuda.weight_bytes`` prints it):

    W_r / x bytes          256@56  512@28  1024@14
    pool_reduce             0.50    0.53    0.65    (was 0.50 / 1.02 / 2.29; 1.00 / 2.04 / 4.57
                                                     with the float32 W_r the block passed)
    gate_backward_dx NCHW   0.01    0.04    0.65    (bounds for B = 64: weight_bytes.py)
    gate_backward_dx CL     0.02    0.08    0.33

gate_backward_dx's programs are persistent (:data:`DX_PROGRAMS`, by shape alone): each holds
the slice of ``W_r`` that its channel tile needs (all of ``K``: up to 64 in channels_last, 32 in
NCHW, :func:`_dx_tile`) and walks that channel tile through every image, so the slice is read
once per program, not once per tile; NCHW at K = 64 reads its ``[BR, K]`` slice per
``[BR, BL]`` tile, half a full tile's bytes. :func:`pool_reduce` cannot hold its weight
between pixel tiles (it sums r over all ``C``: the ``[h, C]`` weight, 128 KB in bf16 at the
last block, fits neither sm_89's shared memory nor a program's registers), so its pixel tile
grows with ``K`` instead: each read of ``W_r`` serves 32 to 128 pixels (:func:`_pool_tile`).
The price: fewer programs (128 at 1024@14 with B = 64, under an H100's 132 multiprocessors).
In float32 without TF32 (``cudnn.allow_tf32`` off) the dots run on FMA units and take smaller
tiles that do not spill: there dx reads ``W_r`` per tile, 1.31x (NCHW) and 2.29x
(channels_last) dy's bytes at 1024@14. None of this has been timed on a GPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the core imports without triton
    triton = None

__all__ = [
    "DTYPES",
    "INTERPRETED",
    "counters",
    "gate_backward",
    "gate_backward_dx",
    "gate_backward_reduce",
    "gate_forward",
    "mlp_backward",
    "mlp_forward",
    "pool_reduce",
    "reduce_weight_grad",
    "supported",
]

# triton.jit picks the interpreter when the decorator runs, i.e. when this module is imported.
INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET", "0") == "1"

DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what x may be


# ---------------------------------------------------------------------------------------------
# Kernels

if triton is not None:
    # Tile counts vary from shape to shape and gain nothing from specialisation: one compile
    # serves them all (D, L and C stay specialised: their divisibility by 16 lets loads vectorise).
    _GRID_COUNTS = ("n_rt", "n_lt")

    @triton.jit
    def _tile(pid, n_rt, n_lt, D, L, BR: tl.constexpr, BL: tl.constexpr):
        # Column tiles fastest, then row tiles, then images: neighbours touch neighbouring memory.
        lt = pid % n_lt
        rt = (pid // n_lt) % n_rt
        b = pid // (n_lt * n_rt)
        d = rt * BR + tl.arange(0, BR)
        col = lt * BL + tl.arange(0, BL)
        return b, rt, lt, d, col, d < D, col < L

    @triton.jit
    def _sigmoid_gate(rv, cv, PRODUCT: tl.constexpr):
        logits = rv[:, None] * cv[None, :] if PRODUCT else rv[:, None] + cv[None, :]
        return tl.sigmoid(logits)

    @triton.jit
    def _last_ticket(tickets_ptr, b, n):
        """Whether this program is the last of the ``n`` that write image b's partials. Every
        thread's partial stores come before the ticket (the barrier, then a release); the last
        program's loads come after it (acquire)."""
        tl.debug_barrier()
        return tl.atomic_add(tickets_ptr + b, 1, sem="acq_rel") == n - 1

    @triton.jit
    def _finish(part_ptr, n_parts, part_stride, out_ptr, n, scale, BN: tl.constexpr,
                BP: tl.constexpr):  # fmt: skip
        """``out[i] = scale * sum_p part[p * part_stride + i]`` for i < n, in a fixed order.
        Wide: a [BP, BN] tile of partials at a time (BP covers every part at BAM-ResNet-50's
        shapes, BP * BN about 4096: :func:`_finish_tiles`), summed over the parts as a tree,
        so the last program of an image takes a few steps, not one per 8 parts and 16-128
        columns. ``while`` loops: n and n_parts are run-time values."""
        i0 = 0
        while i0 < n:
            i = i0 + tl.arange(0, BN)
            mi = i < n
            acc = tl.zeros((BN,), dtype=tl.float32)
            p0 = 0
            while p0 < n_parts:
                p = p0 + tl.arange(0, BP)
                m = (p < n_parts)[:, None] & mi[None, :]
                ptrs = part_ptr + p[:, None].to(tl.int64) * part_stride + i[None, :]
                acc += tl.sum(tl.load(ptrs, mask=m, other=0.0, cache_modifier=".cg"), axis=0)
                p0 += BP
            tl.store(out_ptr + i, (acc * scale).to(out_ptr.dtype.element_ty), mask=mi)
            i0 += BN

    @triton.jit(do_not_specialize=_GRID_COUNTS)
    def _fwd_kernel(
        x_ptr, y_ptr, rv_ptr, cv_ptr, D, L, n_rt, n_lt,
        PRODUCT: tl.constexpr, BR: tl.constexpr, BL: tl.constexpr,
    ):  # fmt: skip
        b, rt, lt, d, col, md, ml = _tile(tl.program_id(0), n_rt, n_lt, D, L, BR, BL)
        mask = md[:, None] & ml[None, :]
        off = b.to(tl.int64) * D * L + d[:, None] * L + col[None, :]
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + b * D + d, mask=md, other=0.0).to(tl.float32)
        cv = tl.load(cv_ptr + b * L + col, mask=ml, other=0.0).to(tl.float32)
        y = x * (1.0 + _sigmoid_gate(rv, cv, PRODUCT))
        tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=_GRID_COUNTS + ("B",))
    def _bwd_kernel(
        dy_ptr, x_ptr, rv_ptr, cv_ptr, dx_ptr, prow_ptr, pcol_ptr, row_ptr, col_ptr, tickets_ptr,
        B, D, L, n_rt, n_lt,
        PRODUCT: tl.constexpr, WRITE_DX: tl.constexpr, BR: tl.constexpr, BL: tl.constexpr,
        FIN_NR: tl.constexpr, FIN_PR: tl.constexpr, FIN_NC: tl.constexpr, FIN_PC: tl.constexpr,
    ):  # fmt: skip
        b, rt, lt, d, col, md, ml = _tile(tl.program_id(0), n_rt, n_lt, D, L, BR, BL)
        mask = md[:, None] & ml[None, :]
        off = b.to(tl.int64) * D * L + d[:, None] * L + col[None, :]
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + b * D + d, mask=md, other=0.0).to(tl.float32)
        cv = tl.load(cv_ptr + b * L + col, mask=ml, other=0.0).to(tl.float32)
        g = _sigmoid_gate(rv, cv, PRODUCT)
        if WRITE_DX:
            tl.store(dx_ptr + off, (dy * (1.0 + g)).to(dx_ptr.dtype.element_ty), mask=mask)
        dl = dy * x * g * (1.0 - g)  # masked lanes have dy = x = 0, so dl = 0 there
        if PRODUCT:
            row = tl.sum(dl * cv[None, :], axis=1)
            colsum = tl.sum(dl * rv[:, None], axis=0)
        else:
            row = tl.sum(dl, axis=1)
            colsum = tl.sum(dl, axis=0)
        # Partials: prow [B, n_lt, D] (sum over this tile's columns), pcol [B, n_rt, L].
        tl.store(prow_ptr + (b * n_lt + lt).to(tl.int64) * D + d, row, mask=md)
        tl.store(pcol_ptr + (b * n_rt + rt).to(tl.int64) * L + col, colsum, mask=ml)
        if _last_ticket(tickets_ptr, b, n_rt * n_lt):
            tl.atomic_xchg(tickets_ptr + b, 0)  # every program of image b has taken its ticket
            base = b.to(tl.int64)
            _finish(prow_ptr + base * n_lt * D, n_lt, D, row_ptr + base * D, D, 1.0, FIN_NR,
                    FIN_PR)  # fmt: skip
            _finish(pcol_ptr + base * n_rt * L, n_rt, L, col_ptr + base * L, L, 1.0, FIN_NC,
                    FIN_PC)  # fmt: skip

    @triton.jit
    def _dx_weight(w_ptr, wt, D, L, K, CL: tl.constexpr, BR: tl.constexpr, BL: tl.constexpr,
                   BK: tl.constexpr):  # fmt: skip
        """W_r's slice for weight-side tile ``wt`` (K rows from 0): [BK, BL] of its columns in
        channels_last, [BR, BK] (transposed) of its rows in NCHW."""
        k = tl.arange(0, BK)
        mk = k < K
        if CL:  # (one return: the compiler types every return of a function alike)
            col = wt * BL + tl.arange(0, BL)
            w = tl.load(w_ptr + k[:, None] * L + col[None, :],
                        mask=mk[:, None] & (col < L)[None, :], other=0.0)  # fmt: skip
        else:
            d = wt * BR + tl.arange(0, BR)
            w = tl.load(w_ptr + k[None, :] * D + d[:, None],
                        mask=(d < D)[:, None] & mk[None, :], other=0.0)  # fmt: skip
        return w

    @triton.jit(do_not_specialize=("B", "n_rt", "n_lt", "NW"))
    def _dx_kernel(
        dy_ptr, dx_ptr, rv_ptr, cv_ptr, pool_ptr, w_ptr, dr_ptr, B, D, L, n_rt, n_lt, NW, inv_hw,
        dr_sb, dr_sk, dr_sp,
        K: tl.constexpr, PRODUCT: tl.constexpr, CL: tl.constexpr, HAS_POOL: tl.constexpr,
        HAS_DR: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BR: tl.constexpr,
        BL: tl.constexpr, BK: tl.constexpr,
    ):  # fmt: skip
        # Persistent over the tiles that share one slice of W_r: the channel tile (columns in
        # channels_last, rows in NCHW) is fixed per program, which walks every NW-th of the
        # other tiles of all images. When all of K fits one step (K <= BK: every block of
        # BAM-ResNet-50) the slice is read once per program, not once per tile.
        W_HELD: tl.constexpr = HAS_DR and K <= BK
        n_wt = n_lt if CL else n_rt
        n_ot = n_rt if CL else n_lt
        pid = tl.program_id(0)
        wt = pid % n_wt
        if W_HELD:
            w_held = _dx_weight(w_ptr, wt, D, L, K, CL, BR, BL, BK)
        t = pid // n_wt
        while t < B * n_ot:
            b = t // n_ot
            ot = t % n_ot
            rt = ot if CL else wt
            lt = wt if CL else ot
            d = rt * BR + tl.arange(0, BR)
            col = lt * BL + tl.arange(0, BL)
            md, ml = d < D, col < L
            mask = md[:, None] & ml[None, :]
            off = b.to(tl.int64) * D * L + d[:, None] * L + col[None, :]
            dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
            rv = tl.load(rv_ptr + b * D + d, mask=md, other=0.0).to(tl.float32)
            cv = tl.load(cv_ptr + b * L + col, mask=ml, other=0.0).to(tl.float32)
            acc = dy * (1.0 + _sigmoid_gate(rv, cv, PRODUCT))
            if HAS_POOL:  # dpool [B, C] is indexed like c: by rows in NCHW, by columns in CL
                if CL:
                    pv = tl.load(pool_ptr + b * L + col, mask=ml, other=0.0).to(tl.float32)
                    acc += pv[None, :] * inv_hw
                else:
                    pv = tl.load(pool_ptr + b * D + d, mask=md, other=0.0).to(tl.float32)
                    acc += pv[:, None] * inv_hw
            if HAS_DR:  # + W_r^T @ dr per pixel; W_r [K, C] contiguous, dr [B, K, HW] by strides
                ks = tl.arange(0, BK)
                dr_base = dr_ptr + b.to(tl.int64) * dr_sb
                for k0 in range(0, K, BK):  # K is a compile-time bound (module docstring)
                    k = k0 + ks
                    mk = k < K
                    if CL:  # rows are pixels, columns channels: dr^T [BR, BK] @ W [BK, BL]
                        a = tl.load(
                            dr_base + d[:, None] * dr_sp + k[None, :] * dr_sk,
                            mask=md[:, None] & mk[None, :], other=0.0,
                        )  # fmt: skip
                        if W_HELD:
                            w = w_held
                        else:
                            w = tl.load(
                                w_ptr + k[:, None] * L + col[None, :],
                                mask=mk[:, None] & ml[None, :], other=0.0,
                            )  # fmt: skip
                        if UPCAST:
                            a = a.to(tl.float32)
                        acc = tl.dot(a, w.to(a.dtype), acc, input_precision=PRECISION)
                    else:  # rows are channels, columns pixels: W^T [BR, BK] @ dr [BK, BL]
                        if W_HELD:
                            w = w_held
                        else:
                            w = tl.load(
                                w_ptr + k[None, :] * D + d[:, None],
                                mask=md[:, None] & mk[None, :], other=0.0,
                            )  # fmt: skip
                        a = tl.load(
                            dr_base + k[:, None] * dr_sk + col[None, :] * dr_sp,
                            mask=mk[:, None] & ml[None, :], other=0.0,
                        )  # fmt: skip
                        if UPCAST:
                            a = a.to(tl.float32)
                        acc = tl.dot(w.to(a.dtype), a, acc, input_precision=PRECISION)
            tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=mask)
            t += NW

    @triton.jit(do_not_specialize=("B", "K", "n_pt", "n_kt"))
    def _pool_reduce_kernel(
        x_ptr, w_ptr, bias_ptr, r_ptr, ppool_ptr, pooled_ptr, tickets_ptr, B, HW, K, n_pt, n_kt,
        inv_hw, C: tl.constexpr, CL: tl.constexpr, HAS_BIAS: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr,
        BK: tl.constexpr, FIN_N: tl.constexpr, FIN_P: tl.constexpr,
    ):  # fmt: skip
        # A program owns BP pixels x BK outputs of one image and walks all channels, so r needs
        # no partials; the pool's per-pixel-tile partials go to ppool [B, n_pt, C], and the
        # last of an image's programs with kt == 0 finishes its pooled vector.
        pid = tl.program_id(0)
        kt = pid % n_kt
        pt = (pid // n_kt) % n_pt
        b = pid // (n_kt * n_pt)
        p = pt * BP + tl.arange(0, BP)
        k = kt * BK + tl.arange(0, BK)
        mp, mk = p < HW, k < K
        x_base = x_ptr + b.to(tl.int64) * C * HW
        ppool_base = ppool_ptr + b.to(tl.int64) * n_pt * C
        if CL:
            acc = tl.zeros((BP, BK), dtype=tl.float32)
        else:
            acc = tl.zeros((BK, BP), dtype=tl.float32)
        for c0 in range(0, C, BC):  # C is a compile-time bound (see the module docstring)
            ch = c0 + tl.arange(0, BC)
            mc = ch < C
            if CL:  # x [BP, BC] @ W^T [BC, BK]
                xt = tl.load(
                    x_base + p[:, None] * C + ch[None, :], mask=mp[:, None] & mc[None, :], other=0.0
                )
                if UPCAST:
                    xt = xt.to(tl.float32)
                w = tl.load(
                    w_ptr + k[None, :] * C + ch[:, None], mask=mc[:, None] & mk[None, :], other=0.0
                )
                acc = tl.dot(xt, w.to(xt.dtype), acc, input_precision=PRECISION)
                pooled = tl.sum(xt.to(tl.float32), axis=0)
            else:  # W [BK, BC] @ x [BC, BP]
                xt = tl.load(
                    x_base + ch[:, None] * HW + p[None, :],
                    mask=mc[:, None] & mp[None, :], other=0.0,
                )  # fmt: skip
                if UPCAST:
                    xt = xt.to(tl.float32)
                w = tl.load(
                    w_ptr + k[:, None] * C + ch[None, :], mask=mk[:, None] & mc[None, :], other=0.0
                )
                acc = tl.dot(w.to(xt.dtype), xt, acc, input_precision=PRECISION)
                pooled = tl.sum(xt.to(tl.float32), axis=1)
            if kt == 0:
                tl.store(ppool_base + pt * C + ch, pooled, mask=mc)
        r_base = r_ptr + b.to(tl.int64) * HW * K  # r is channels_last: [B, HW, K] in memory
        if CL:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + k, mask=mk, other=0.0).to(tl.float32)[None, :]
            r_off = p[:, None] * K + k[None, :]
            r_mask = mp[:, None] & mk[None, :]
        else:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + k, mask=mk, other=0.0).to(tl.float32)[:, None]
            r_off = p[None, :] * K + k[:, None]
            r_mask = mk[:, None] & mp[None, :]
        tl.store(r_base + r_off, acc.to(r_ptr.dtype.element_ty), mask=r_mask)
        if kt == 0:
            if _last_ticket(tickets_ptr, b, n_pt):
                tl.atomic_xchg(tickets_ptr + b, 0)
                _finish(ppool_base, n_pt, C, pooled_ptr + b.to(tl.int64) * C, C, inv_hw, FIN_N,
                        FIN_P)  # fmt: skip

    # The channel MLP with one hidden layer, Linear -> BatchNorm1d -> ReLU -> Linear, on
    # [B, C]: tiny (C/r hidden units), so one program does all of it, walking B in BB-row
    # blocks (``while``: B is a run-time value) and C in BC-column blocks. Products run on
    # operands in the compute dtype with float32 accumulation, rounded where the ATen layers
    # round (each layer's output), as cuBLAS does under autocast.

    @triton.jit
    def _mlp_fwd_kernel(
        p_ptr, w1_ptr, b1_ptr, g_ptr, beta_ptr, rm_ptr, rv_ptr, w2_ptr, b2_ptr,
        z_ptr, a_ptr, mean_ptr, invstd_ptr, c_ptr, B, momentum, eps,
        C: tl.constexpr, H: tl.constexpr, TRAIN: tl.constexpr, PRECISION: tl.constexpr,
        UPCAST: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, BC: tl.constexpr,
    ):  # fmt: skip
        dt = z_ptr.dtype.element_ty
        h = tl.arange(0, BH)
        mh = h < H
        b1 = tl.load(b1_ptr + h, mask=mh, other=0.0).to(dt).to(tl.float32)
        # z = pooled @ W1^T + b1, and its column sums
        s1 = tl.zeros((BH,), dtype=tl.float32)
        b0 = 0
        while b0 < B:
            rb = b0 + tl.arange(0, BB)
            mb = rb < B
            acc = tl.zeros((BB, BH), dtype=tl.float32)
            for c0 in range(0, C, BC):
                cc = c0 + tl.arange(0, BC)
                mc = cc < C
                x = tl.load(p_ptr + rb[:, None] * C + cc[None, :], mask=mb[:, None] & mc[None, :],
                            other=0.0)  # fmt: skip
                w = tl.load(w1_ptr + h[None, :] * C + cc[:, None], mask=mc[:, None] & mh[None, :],
                            other=0.0).to(dt)  # fmt: skip
                if UPCAST:
                    x, w = x.to(tl.float32), w.to(tl.float32)
                acc = tl.dot(x, w, acc, input_precision=PRECISION)
            z = (acc + b1[None, :]).to(dt)
            m2 = mb[:, None] & mh[None, :]
            tl.store(z_ptr + rb[:, None] * H + h[None, :], z, mask=m2)
            s1 += tl.sum(tl.where(m2, z.to(tl.float32), 0.0), axis=0)
            b0 += BB
        tl.debug_barrier()  # z written by every thread before any reads it back
        if TRAIN:
            mean = s1 / B
            s2 = tl.zeros((BH,), dtype=tl.float32)
            b0 = 0
            while b0 < B:
                rb = b0 + tl.arange(0, BB)
                m2 = (rb < B)[:, None] & mh[None, :]
                z = tl.load(z_ptr + rb[:, None] * H + h[None, :], mask=m2, other=0.0)
                d = tl.where(m2, z.to(tl.float32) - mean[None, :], 0.0)
                s2 += tl.sum(d * d, axis=0)
                b0 += BB
            var = s2 / B
            rm = tl.load(rm_ptr + h, mask=mh, other=0.0).to(tl.float32)
            rv = tl.load(rv_ptr + h, mask=mh, other=0.0).to(tl.float32)
            tl.store(rm_ptr + h, ((1.0 - momentum) * rm + momentum * mean)
                     .to(rm_ptr.dtype.element_ty), mask=mh)  # fmt: skip
            unbiased = s2 / tl.maximum(B - 1, 1)
            tl.store(rv_ptr + h, ((1.0 - momentum) * rv + momentum * unbiased)
                     .to(rv_ptr.dtype.element_ty), mask=mh)  # fmt: skip
        else:
            mean = tl.load(rm_ptr + h, mask=mh, other=0.0).to(tl.float32)
            var = tl.load(rv_ptr + h, mask=mh, other=1.0).to(tl.float32)
        invstd = 1.0 / tl.sqrt(var + eps)
        tl.store(mean_ptr + h, mean, mask=mh)
        tl.store(invstd_ptr + h, invstd, mask=mh)
        scale = tl.load(g_ptr + h, mask=mh, other=0.0).to(tl.float32) * invstd
        shift = tl.load(beta_ptr + h, mask=mh, other=0.0).to(tl.float32) - mean * scale
        # a = relu(BN(z)); c = a @ W2^T + b2
        b0 = 0
        while b0 < B:
            rb = b0 + tl.arange(0, BB)
            mb = rb < B
            m2 = mb[:, None] & mh[None, :]
            z = tl.load(z_ptr + rb[:, None] * H + h[None, :], mask=m2, other=0.0).to(tl.float32)
            a = tl.maximum((z * scale[None, :] + shift[None, :]).to(dt), 0.0).to(dt)
            tl.store(a_ptr + rb[:, None] * H + h[None, :], a, mask=m2)
            if UPCAST:
                a = a.to(tl.float32)
            for c0 in range(0, C, BC):
                cc = c0 + tl.arange(0, BC)
                mc = cc < C
                w = tl.load(w2_ptr + cc[None, :] * H + h[:, None], mask=mh[:, None] & mc[None, :],
                            other=0.0).to(dt)  # fmt: skip
                if UPCAST:
                    w = w.to(tl.float32)
                out = tl.dot(a, w, input_precision=PRECISION)
                out += tl.load(b2_ptr + cc, mask=mc, other=0.0).to(dt).to(tl.float32)[None, :]
                tl.store(c_ptr + rb[:, None] * C + cc[None, :], out.to(dt),
                         mask=mb[:, None] & mc[None, :])  # fmt: skip
            b0 += BB

    @triton.jit
    def _mlp_bwd_kernel(
        dc_ptr, p_ptr, z_ptr, a_ptr, mean_ptr, invstd_ptr, g_ptr, w1_ptr, w2_ptr,
        dw1_ptr, db1_ptr, dg_ptr, dbeta_ptr, dw2_ptr, db2_ptr, dpool_ptr, da_ptr, dz_ptr, B,
        C: tl.constexpr, H: tl.constexpr, TRAIN: tl.constexpr, NEED_DPOOL: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr,
        BC: tl.constexpr,
    ):  # fmt: skip
        dt = dz_ptr.dtype.element_ty
        h = tl.arange(0, BH)
        mh = h < H
        # dW2 = dc^T @ a [C, H], db2 = sum_b dc; da = dc @ W2 [B, H] (to the scratch da).
        for c0 in range(0, C, BC):
            cc = c0 + tl.arange(0, BC)
            mc = cc < C
            acc = tl.zeros((BC, BH), dtype=tl.float32)
            db2 = tl.zeros((BC,), dtype=tl.float32)
            b0 = 0
            while b0 < B:
                rb = b0 + tl.arange(0, BB)
                mb = rb < B
                g = tl.load(dc_ptr + rb[None, :] * C + cc[:, None], mask=mc[:, None] & mb[None, :],
                            other=0.0)  # fmt: skip
                a = tl.load(a_ptr + rb[:, None] * H + h[None, :], mask=mb[:, None] & mh[None, :],
                            other=0.0)  # fmt: skip
                db2 += tl.sum(g.to(tl.float32), axis=1)
                if UPCAST:
                    g, a = g.to(tl.float32), a.to(tl.float32)
                acc = tl.dot(g, a, acc, input_precision=PRECISION)
                b0 += BB
            tl.store(dw2_ptr + cc[:, None] * H + h[None, :], acc.to(dw2_ptr.dtype.element_ty),
                     mask=mc[:, None] & mh[None, :])  # fmt: skip
            tl.store(db2_ptr + cc, db2.to(db2_ptr.dtype.element_ty), mask=mc)
        b0 = 0
        while b0 < B:
            rb = b0 + tl.arange(0, BB)
            mb = rb < B
            acc = tl.zeros((BB, BH), dtype=tl.float32)
            for c0 in range(0, C, BC):
                cc = c0 + tl.arange(0, BC)
                mc = cc < C
                g = tl.load(dc_ptr + rb[:, None] * C + cc[None, :], mask=mb[:, None] & mc[None, :],
                            other=0.0)  # fmt: skip
                w = tl.load(w2_ptr + cc[:, None] * H + h[None, :], mask=mc[:, None] & mh[None, :],
                            other=0.0).to(dt)  # fmt: skip
                if UPCAST:
                    g, w = g.to(tl.float32), w.to(tl.float32)
                acc = tl.dot(g, w, acc, input_precision=PRECISION)
            tl.store(da_ptr + rb[:, None] * H + h[None, :], acc.to(dt),
                     mask=mb[:, None] & mh[None, :])  # fmt: skip
            b0 += BB
        tl.debug_barrier()
        # BatchNorm1d + ReLU backward: dbeta = sum dzr, dgamma = sum dzr * xhat, then dz.
        mean = tl.load(mean_ptr + h, mask=mh, other=0.0)
        invstd = tl.load(invstd_ptr + h, mask=mh, other=0.0)
        gamma = tl.load(g_ptr + h, mask=mh, other=0.0).to(tl.float32)
        dbeta = tl.zeros((BH,), dtype=tl.float32)
        dgamma = tl.zeros((BH,), dtype=tl.float32)
        b0 = 0
        while b0 < B:
            rb = b0 + tl.arange(0, BB)
            m2 = (rb < B)[:, None] & mh[None, :]
            off = rb[:, None] * H + h[None, :]
            da = tl.load(da_ptr + off, mask=m2, other=0.0).to(tl.float32)
            a = tl.load(a_ptr + off, mask=m2, other=0.0).to(tl.float32)
            xhat = (tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32) - mean) * invstd
            dzr = tl.where(a > 0.0, da, 0.0)
            dbeta += tl.sum(dzr, axis=0)
            dgamma += tl.sum(dzr * xhat, axis=0)
            b0 += BB
        tl.store(dg_ptr + h, dgamma.to(dg_ptr.dtype.element_ty), mask=mh)
        tl.store(dbeta_ptr + h, dbeta.to(dbeta_ptr.dtype.element_ty), mask=mh)
        k = gamma * invstd
        b0 = 0
        db1 = tl.zeros((BH,), dtype=tl.float32)
        while b0 < B:
            rb = b0 + tl.arange(0, BB)
            m2 = (rb < B)[:, None] & mh[None, :]
            off = rb[:, None] * H + h[None, :]
            da = tl.load(da_ptr + off, mask=m2, other=0.0).to(tl.float32)
            a = tl.load(a_ptr + off, mask=m2, other=0.0).to(tl.float32)
            dzr = tl.where(a > 0.0, da, 0.0)
            if TRAIN:
                xhat = (tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32) - mean) * invstd
                dz = k * (dzr - dbeta / B - xhat * (dgamma / B))
            else:
                dz = k * dzr
            dz = tl.where(m2, dz, 0.0).to(dt)
            tl.store(dz_ptr + off, dz, mask=m2)
            db1 += tl.sum(dz.to(tl.float32), axis=0)
            b0 += BB
        tl.store(db1_ptr + h, db1.to(db1_ptr.dtype.element_ty), mask=mh)
        tl.debug_barrier()
        # dW1 = dz^T @ pooled [H, C]; dpool = dz @ W1 [B, C].
        for c0 in range(0, C, BC):
            cc = c0 + tl.arange(0, BC)
            mc = cc < C
            acc = tl.zeros((BH, BC), dtype=tl.float32)
            b0 = 0
            while b0 < B:
                rb = b0 + tl.arange(0, BB)
                mb = rb < B
                dz = tl.load(dz_ptr + rb[None, :] * H + h[:, None], mask=mh[:, None] & mb[None, :],
                             other=0.0)  # fmt: skip
                x = tl.load(p_ptr + rb[:, None] * C + cc[None, :], mask=mb[:, None] & mc[None, :],
                            other=0.0)  # fmt: skip
                if UPCAST:
                    dz, x = dz.to(tl.float32), x.to(tl.float32)
                acc = tl.dot(dz, x, acc, input_precision=PRECISION)
                b0 += BB
            tl.store(dw1_ptr + h[:, None] * C + cc[None, :], acc.to(dw1_ptr.dtype.element_ty),
                     mask=mh[:, None] & mc[None, :])  # fmt: skip
        if NEED_DPOOL:
            b0 = 0
            while b0 < B:
                rb = b0 + tl.arange(0, BB)
                mb = rb < B
                dz = tl.load(dz_ptr + rb[:, None] * H + h[None, :], mask=mb[:, None] & mh[None, :],
                             other=0.0)  # fmt: skip
                if UPCAST:
                    dz = dz.to(tl.float32)
                for c0 in range(0, C, BC):
                    cc = c0 + tl.arange(0, BC)
                    mc = cc < C
                    w = tl.load(w1_ptr + h[:, None] * C + cc[None, :],
                                mask=mh[:, None] & mc[None, :], other=0.0).to(dt)  # fmt: skip
                    if UPCAST:
                        w = w.to(tl.float32)
                    out = tl.dot(dz, w, input_precision=PRECISION)
                    tl.store(dpool_ptr + rb[:, None] * C + cc[None, :], out.to(dt),
                             mask=mb[:, None] & mc[None, :])  # fmt: skip
                b0 += BB


# ---------------------------------------------------------------------------------------------
# Checks, layout and tiles


def supported(x: Tensor) -> bool:
    """Whether these kernels take ``x``: 4-D, float16/bfloat16/float32, contiguous in NCHW or
    channels_last, on CUDA (or on CPU when the kernels run under the Triton interpreter)."""
    if triton is None or x.dim() != 4 or x.dtype not in DTYPES:
        return False
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return False
    return x.device.type == "cuda" or (x.device.type == "cpu" and INTERPRETED)


def _check_x(x: Tensor, name: str) -> None:
    if triton is None:
        raise RuntimeError(f"{name}: triton is not installed; pip install triton.")
    if x.dim() != 4:
        raise ValueError(f"{name}: x must be [B, C, H, W], got shape {list(x.shape)}.")
    if x.dtype not in DTYPES:
        raise ValueError(
            f"{name}: x must be float16, bfloat16 or float32, got {x.dtype}; convert it with "
            f".to(torch.float32) or use the ATen path (torch_bam.functional.set_backend('aten'))."
        )
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(
            f"{name}: x (shape {list(x.shape)}, strides {list(x.stride())}) is neither NCHW- nor "
            f"channels_last-contiguous; pass x.contiguous() or "
            f"x.contiguous(memory_format=torch.channels_last)."
        )
    if x.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            f"{name}: x is on the CPU, where these Triton kernels run only under the interpreter: "
            f"set TRITON_INTERPRET=1 before torch_bam.cuda.kernels (and triton) is imported, or "
            f"move x to a CUDA device."
        )
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: x is on {x.device}; these kernels take CUDA tensors.")


def _check_small(t: Tensor, name: str, what: str, numel: int, x: Tensor) -> Tensor:
    """A small operand as a flat contiguous vector of ``numel`` floats on x's device."""
    if not t.is_floating_point():
        raise ValueError(f"{name}: {what} must be a float tensor, got {t.dtype}.")
    if t.numel() != numel:
        raise ValueError(
            f"{name}: {what} has shape {list(t.shape)}, which does not fit x of shape "
            f"{list(x.shape)} ({numel} elements expected)."
        )
    if t.device != x.device:
        raise ValueError(f"{name}: {what} is on {t.device} but x is on {x.device}.")
    return t.reshape(-1).contiguous()


def _is_cl(x: Tensor) -> bool:
    # A tensor contiguous both ways (C == 1 or H*W == 1) is read as NCHW: same memory.
    return not x.is_contiguous()


def _dl(x: Tensor) -> tuple[bool, int, int]:
    """(channels_last, D, L): the per-image matrix view [D, L] with L contiguous."""
    b, ch, h, w = x.shape
    cl = _is_cl(x)
    return cl, (h * w if cl else ch), (ch if cl else h * w)


def _like(t: Tensor, x: Tensor) -> Tensor:
    """t in x's memory layout (a copy only if the layouts differ)."""
    fmt = torch.channels_last if _is_cl(x) else torch.contiguous_format
    t = t.contiguous(memory_format=fmt)
    return t if _is_cl(t) == _is_cl(x) else t.contiguous()


def _rows_cols(x: Tensor, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """The per-row and per-column gate vectors of the [D, L] view."""
    return (s, c) if _is_cl(x) else (c, s)


def _np2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _precision(dtype: torch.dtype, kind: str) -> str:
    """tl.dot's input_precision: TF32 for float32 exactly where the plain path's layer would use
    it -- ``kind="conv"`` (the 1x1 reduce, as cuDNN) follows ``torch.backends.cudnn.allow_tf32``
    (default on), ``kind="matmul"`` (the channel MLP, as nn.Linear / cuBLAS) follows
    ``torch.backends.cuda.matmul.allow_tf32`` (default off)."""
    if dtype != torch.float32:
        return "ieee"  # ignored by tl.dot for float16/bfloat16 operands
    flag = torch.backends.cudnn if kind == "conv" else torch.backends.cuda.matmul
    return "tf32" if flag.allow_tf32 else "ieee"


def _fma(dtype: torch.dtype, kind: str) -> bool:
    """Whether tl.dot runs on FMA units, not tensor cores (float32 without TF32, see
    :func:`_precision`): such dots hold every operand in registers and take their own tiles."""
    return dtype == torch.float32 and _precision(dtype, kind) == "ieee"


def _upcast(dtype: torch.dtype) -> bool:
    # Triton's interpreter (3.8) multiplies bfloat16 dot operands as their uint16 bit patterns:
    # there, and only there, bfloat16 dots run on float32 operands.
    return INTERPRETED and dtype == torch.bfloat16


# Tiles: functions of the shape alone (never timed), the same on every run and rank. Wide
# along the contiguous axis L (vector loads, few partials for the row sums), 4096 elements a
# program (8 warps for the gate, 4 for the kernels with tl.dot, which keep every side >= 16
# and their operand tiles small enough for sm_89's shared memory at Triton's default
# pipelining depth).


def _gate_tile(d: int, ll: int) -> tuple[int, int, int]:
    """(BR, BL, num_warps) for the gate's forward and backward on a [D, L] map."""
    bl = min(128, _np2(ll))
    return min(4096 // bl, _np2(d)), bl, 8


def _dx_tile(d: int, ll: int, k: int, cl: bool, fma: bool) -> tuple[int, int, int, int]:
    """(BR, BL, BK, num_warps) for gate_backward_dx (BK: the W_r^T @ dr product's depth). All
    of K in one step, so that a program holds its slice of W_r: up to 64 in channels_last
    (dr's [BR, K] tile is the small operand), up to 32 in NCHW (there dr's [K, BL] tile is the
    large one: at K = 64 it took 254 registers, and spilled in float32, on sm_90); else steps
    of 32. ``fma``: float32 dots without TF32 (no tensor cores) hold every operand in
    registers: half the tile and steps of 16 (at 4096 elements and all of K they spilled 0.4-15
    KB on sm_80, sm_89 and sm_90), so W_r is read per tile there (about 1-2.3x dy's bytes at
    512@28 and 1024@14: tests/cuda/weight_bytes.py)."""
    if fma:
        bl = max(16, min(64, _np2(ll)))
        return max(16, min(2048 // bl, _np2(d))), bl, 16, 4
    bl = max(16, min(128, _np2(ll)))
    bk = max(16, _np2(k)) if k <= (64 if cl else 32) else 32
    return max(16, min(4096 // bl, _np2(d))), bl, bk, 4


# gate_backward_dx's persistent programs (fewer only when there are fewer tiles): about four a
# multiprocessor on an H100, each holding its slice of W_r over a dozen or more tiles at
# BAM-ResNet-50's shapes (one tile a program re-read it per tile: 4.6x x's bytes at 1024@14).
DX_PROGRAMS = 512


def _dx_grid(b: int, n_rt: int, n_lt: int, cl: bool) -> tuple[int, int]:
    """(programs, NW): one program per weight-side tile (channel tile) and worker, each worker
    taking every NW-th of the other tiles of all images; by shape alone."""
    n_wt, n_ot = (n_lt, n_rt) if cl else (n_rt, n_lt)
    nw = max(1, min(b * n_ot, -(-DX_PROGRAMS // n_wt)))
    return n_wt * nw, nw


# pool_reduce's accumulator, BP pixels x BK outputs in float32: at most this many (64
# registers a thread at 4 warps, 32 at 8).
POOL_ACC = 8192


def _pool_tile(hw: int, ch: int, k: int, esize: int, fma: bool) -> tuple[int, int, int, int]:
    """(BP, BC, BK, num_warps) for pool_reduce: BP pixels x BK outputs a program, BC channels
    a step of its walk over C (``esize``: bytes of an element of x, and of W_r, which is read
    in x's dtype).

    Why BP grows with K: a program sums r over all C, so it streams its [BK, C] rows of W_r
    once per BP pixels; it cannot keep them from one pixel tile to the next (64 x 1024 at
    BAM-ResNet-50's last block, 128 KB in bf16: more than sm_89's 99 KB of shared memory,
    and Triton holds a loop's tiles in registers, not in a slice it can index). An image then
    reads ``ceil(HW / BP) * K * C`` weights against ``HW * C`` of x: BP is the smallest power
    of two from 32 that keeps W_r's bytes at most x's, as far as the accumulator
    (BP * BK <= POOL_ACC) and the image (BP <= HW) allow. At BAM-ResNet-50's shapes: 32, 64,
    128 pixels at 256@56, 512@28, 1024@14 (W_r then 0.50x, 0.53x, 0.65x x's bytes), with 128,
    13, 2 pixel tiles an image. BC keeps one pipeline stage of the two dot operands,
    ``(BP + BK) * BC`` elements, within 12 KB: at 24 KB the bf16 NCHW tile at 1024@14 took 223
    registers on sm_80 and sm_89, at 12 KB at most 128 (tests/cuda/compile_targets.py).
    ``fma``: float32 dots without TF32 (no tensor cores) take 16 channels a step: with 64,
    ptxas spilled 188-316 bytes on sm_80 in channels_last."""
    bk = max(16, min(64, _np2(k)))
    bp = max(16, min(32, _np2(hw)))
    while bp < _np2(hw) and bp * bk < POOL_ACC and -(-hw // bp) * k > hw:
        bp *= 2
    bc = 16 if fma else 64
    while bc > 16 and (bp + bk) * bc * esize > 12 * 1024:
        bc //= 2
    return bp, max(16, min(bc, _np2(ch))), bk, 8 if bp * bk >= POOL_ACC else 4


FINISH_ELEMENTS = 4096  # partials the last program sums per step of its finishing loop


def _finish_tiles(suffix: str, n_parts: int, n: int) -> dict:
    """The finishing reduction's tile, by shape alone: every part at once where it fits
    (at most 128), the columns filling FINISH_ELEMENTS. Meta-parameters ``FIN_N{suffix}``
    (columns) and ``FIN_P{suffix}`` (parts)."""
    bp = max(2, min(128, _np2(n_parts)))
    bn = max(16, min(_np2(n), FINISH_ELEMENTS // bp))
    return {f"FIN_N{suffix}": bn, f"FIN_P{suffix}": bp}


def _launch(kernel, grid: tuple, *args, **meta):
    """Every kernel launch goes through here (tests compile each one for several targets
    through it). Triton launches on the current device and its current stream: under a
    ``torch.cuda.device`` guard for the first tensor's device, that is the tensors' device (a
    tensor on cuda:1 with cuda:0 current would otherwise be read from the wrong device)."""
    dev = next(a.device for a in args if isinstance(a, Tensor))
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            kernel[grid](*args, **meta)
    else:
        kernel[grid](*args, **meta)


def counters(x: Tensor, n: int | None = None) -> Tensor:
    """A zeroed int32 buffer of one ticket per image for :func:`pool_reduce` and
    :func:`gate_backward_reduce`. Each kernel leaves it at zero again (the last program of an
    image resets its ticket), so a caller may pass the same buffer to the calls it makes in
    order on one stream (the block passes its forward's to its backward). Made per call, never
    kept in a module: under CUDA graphs (``torch.compile(mode="reduce-overhead")``) a buffer
    kept across calls would live in a graph's memory pool, which later warm-ups free and
    reuse."""
    return torch.zeros(x.shape[0] if n is None else n, dtype=torch.int32, device=x.device)


def _check_counters(t: Tensor | None, x: Tensor, name: str) -> Tensor:
    if t is None:
        return counters(x)
    if t.dtype != torch.int32 or t.device != x.device or t.numel() < x.shape[0]:
        raise ValueError(
            f"{name}: tickets must be an int32 tensor of at least {x.shape[0]} zeros on "
            f"{x.device} (kernels.counters(x)), got {t.dtype} {list(t.shape)} on {t.device}."
        )
    return t


# ---------------------------------------------------------------------------------------------
# The functions


def gate_forward(x: Tensor, c: Tensor, s: Tensor, product: bool) -> Tensor:
    """``y = x * (1 + sigmoid(c (+|*) s))``: c ``[B, C]`` (or ``[B, C, 1, 1]``), s
    ``[B, 1, H, W]``. One pass: reads x, writes y (x's dtype and memory format)."""
    _check_x(x, "gate_forward")
    b, ch, h, w = x.shape
    c = _check_small(c, "gate_forward", "c", b * ch, x)
    s = _check_small(s, "gate_forward", "s", b * h * w, x)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    _, d, ll = _dl(x)
    rv, cv = _rows_cols(x, c, s)
    br, bl, warps = _gate_tile(d, ll)
    n_rt, n_lt = triton.cdiv(d, br), triton.cdiv(ll, bl)
    _launch(_fwd_kernel, (b * n_rt * n_lt,), x, y, rv, cv, d, ll, n_rt, n_lt, PRODUCT=product,
            BR=br, BL=bl, num_warps=warps)  # fmt: skip
    return y


def _backward(dy, x, c, s, product: bool, write_dx: bool, out_dtype: torch.dtype, name: str,
              tickets: Tensor | None = None):  # fmt: skip
    _check_x(x, name)
    if dy.shape != x.shape:
        raise ValueError(f"{name}: dy has shape {list(dy.shape)}, x has {list(x.shape)}.")
    if not dy.is_floating_point() or dy.device != x.device:
        raise ValueError(f"{name}: dy must be a float tensor on x's device ({x.device}).")
    b, ch, h, w = x.shape
    c = _check_small(c, name, "c", b * ch, x)
    s = _check_small(s, name, "s", b * h * w, x)
    dy = _like(dy, x)
    dx = torch.empty_like(x) if write_dx else None
    if x.numel() == 0:
        zeros = torch.zeros(b, ch, device=x.device, dtype=out_dtype)
        return dx, zeros, torch.zeros(b, 1, h, w, device=x.device, dtype=out_dtype)
    cl, d, ll = _dl(x)
    rv, cv = _rows_cols(x, c, s)
    br, bl, warps = _gate_tile(d, ll)
    n_rt, n_lt = triton.cdiv(d, br), triton.cdiv(ll, bl)
    # One buffer for both partials (one allocation); the finished vectors in out_dtype.
    part = torch.empty(b * (n_lt * d + n_rt * ll), device=x.device, dtype=torch.float32)
    prow, pcol = part[: b * n_lt * d], part[b * n_lt * d :]
    row = torch.empty(b, d, device=x.device, dtype=out_dtype)
    col = torch.empty(b, ll, device=x.device, dtype=out_dtype)
    _launch(
        _bwd_kernel, (b * n_rt * n_lt,), dy, x, rv, cv, dx if write_dx else x, prow, pcol, row, col,
        _check_counters(tickets, x, name), b, d, ll, n_rt, n_lt, PRODUCT=product,
        WRITE_DX=write_dx, BR=br, BL=bl, **_finish_tiles("R", n_lt, d),
        **_finish_tiles("C", n_rt, ll), num_warps=warps,
    )  # fmt: skip
    dc, ds = (col, row) if cl else (row, col)  # see the module docstring: NCHW rows = channels
    return dx, dc.reshape(b, ch), ds.reshape(b, 1, h, w)


def gate_backward_reduce(
    dy: Tensor, x: Tensor, c: Tensor, s: Tensor, product: bool,
    out_dtype: torch.dtype = torch.float32, tickets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One pass over x and dy: ``dl = dy * x * g * (1 - g)``, ``g = sigmoid(c (+|*) s)``.

    Returns ``dc`` (sum of dl over pixels, times s for product) ``[B, C]`` and ``ds`` (sum over
    channels, times c for product) ``[B, 1, H, W]``, summed in float32 and written in
    ``out_dtype``. ``tickets``: a buffer from :func:`counters` (made here if None).
    """
    _, dc, ds = _backward(dy, x, c, s, product, False, out_dtype, "gate_backward_reduce", tickets)
    return dc, ds


def gate_backward(
    dy: Tensor, x: Tensor, c: Tensor, s: Tensor, product: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The gate's whole backward in one pass (read dy and x, write dx): ``(dx, dc, ds)`` with dx
    ``= dy * (1 + g)`` in x's dtype and format, and dc, ds as :func:`gate_backward_reduce`
    (float32). For the gate alone; the block, whose dx has more terms, uses reduce + dx."""
    return _backward(dy, x, c, s, product, True, torch.float32, "gate_backward")


def gate_backward_dx(
    dy: Tensor,
    c: Tensor,
    s: Tensor,
    product: bool,
    w_reduce: Tensor | None = None,
    dr: Tensor | None = None,
    dpool: Tensor | None = None,
) -> Tensor:
    """One pass over dy, dx written once (dy's dtype and memory format)::

        dx = dy * (1 + g) + W_r^T @ dr (per pixel, if dr is given) + dpool / (H * W) (if given)

    with ``w_reduce`` ``[h, C]`` or ``[h, C, 1, 1]`` (any float dtype: read in dy's, cast here
    when it is in another), ``dr`` ``[B, h, H, W]`` (any layout and float dtype: likewise),
    ``dpool`` ``[B, C]``.
    """
    name = "gate_backward_dx"
    _check_x(dy, name)
    b, ch, h, w = dy.shape
    c = _check_small(c, name, "c", b * ch, dy)
    s = _check_small(s, name, "s", b * h * w, dy)
    if (dr is None) != (w_reduce is None):
        raise ValueError(f"{name}: pass w_reduce and dr together (or neither).")
    k = 0
    if dr is not None:
        k = w_reduce.shape[0]
        w_reduce = _check_small(w_reduce, name, "w_reduce", k * ch, dy)
        if tuple(dr.shape) != (b, k, h, w) or not dr.is_floating_point():
            raise ValueError(
                f"{name}: dr must be a float tensor of shape {[b, k, h, w]} (w_reduce has {k} "
                f"rows), got {dr.dtype} {list(dr.shape)}."
            )
        if dr.device != dy.device:
            raise ValueError(f"{name}: dr is on {dr.device} but dy is on {dy.device}.")
        if dr.dtype != dy.dtype:  # the dot runs in one dtype; dr is C/r-sized, so this is cheap
            dr = dr.to(dy.dtype)
        w_reduce = w_reduce.to(dy.dtype)  # read in dy's dtype; the block's is already
    if dpool is not None:
        dpool = _check_small(dpool, name, "dpool", b * ch, dy)
    dx = torch.empty_like(dy)
    if dy.numel() == 0:
        return dx
    cl, d, ll = _dl(dy)
    rv, cv = _rows_cols(dy, c, s)
    has_dr = dr is not None
    # dr as [B, K, HW] by (image, channel, pixel) strides, NCHW or channels_last (anything else
    # is copied). Canonical strides: a size-1 dim's own stride may be anything.
    dr_strides = (0, 0, 0)
    if has_dr:
        if not (dr.is_contiguous() or dr.is_contiguous(memory_format=torch.channels_last)):
            dr = dr.contiguous()
        dr_strides = (k * h * w, 1, k) if _is_cl(dr) else (k * h * w, h * w, 1)
    fma = _fma(dy.dtype, "conv")
    br, bl, bk, warps = _dx_tile(d, ll, k, cl, fma) if has_dr else (*_gate_tile(d, ll)[:2], 16, 4)
    n_rt, n_lt = triton.cdiv(d, br), triton.cdiv(ll, bl)
    programs, nw = _dx_grid(b, n_rt, n_lt, cl)
    _launch(
        _dx_kernel, (programs,), dy, dx, rv, cv, dpool if dpool is not None else dy,
        w_reduce if has_dr else dy, dr if has_dr else dy, b, d, ll, n_rt, n_lt, nw, 1.0 / (h * w),
        *dr_strides, K=max(k, 1), PRODUCT=product, CL=cl, HAS_POOL=dpool is not None,
        HAS_DR=has_dr, PRECISION=_precision(dy.dtype, "conv"), UPCAST=_upcast(dy.dtype), BR=br,
        BL=bl, BK=bk, num_warps=warps,
    )  # fmt: skip
    return dx


def pool_reduce(
    x: Tensor, w_reduce: Tensor, b_reduce: Tensor | None = None,
    pooled_dtype: torch.dtype = torch.float32, tickets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One pass over x: ``pooled = x.mean((2, 3))`` as ``[B, C]`` (summed in float32, written
    in ``pooled_dtype``), and ``r = conv1x1(x, w_reduce, b_reduce)`` as ``[B, h, H, W]`` in x's
    dtype, always channels_last (the 3x3 convolutions after it run fastest so on a GPU). The
    weights may be any float dtype; ``w_reduce`` is read in x's dtype, cast here (one small
    launch) when it is in another (the block passes it cast, once a step). ``tickets``: a
    buffer from :func:`counters` (made here if None)."""
    name = "pool_reduce"
    _check_x(x, name)
    b, ch, h, w = x.shape
    if w_reduce.dim() not in (2, 4) or w_reduce.shape[1] != ch:
        raise ValueError(
            f"{name}: w_reduce must be [h, C] or [h, C, 1, 1] with C = {ch}, got "
            f"{list(w_reduce.shape)}."
        )
    k = w_reduce.shape[0]
    w_reduce = _check_small(w_reduce, name, "w_reduce", k * ch, x)
    if b_reduce is not None:
        b_reduce = _check_small(b_reduce, name, "b_reduce", k, x)
    r = torch.empty(b, k, h, w, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    hw = h * w
    if x.numel() == 0 or k == 0:
        pooled = torch.zeros(b, ch, device=x.device) if hw == 0 else x.float().mean((2, 3))
        return pooled.to(pooled_dtype), r.zero_()
    w_reduce = w_reduce.to(x.dtype)  # read in x's dtype (see _pool_tile); the block's is already
    prec = _precision(x.dtype, "conv")
    bp, bc, bk, warps = _pool_tile(hw, ch, k, x.element_size(), _fma(x.dtype, "conv"))
    n_pt, n_kt = triton.cdiv(hw, bp), triton.cdiv(k, bk)
    ppool = torch.empty(b, n_pt, ch, device=x.device, dtype=torch.float32)
    pooled = torch.empty(b, ch, device=x.device, dtype=pooled_dtype)
    _launch(
        _pool_reduce_kernel, (b * n_pt * n_kt,), x, w_reduce,
        b_reduce if b_reduce is not None else w_reduce, r, ppool, pooled,
        _check_counters(tickets, x, name),
        b, hw, k, n_pt, n_kt, 1.0 / hw, C=ch, CL=_is_cl(x), HAS_BIAS=b_reduce is not None,
        PRECISION=prec, UPCAST=_upcast(x.dtype), BP=bp, BC=bc, BK=bk,
        **_finish_tiles("", n_pt, ch), num_warps=warps,
    )  # fmt: skip
    return pooled, r


def reduce_weight_grad(x: Tensor, dr: Tensor, out_dtype: torch.dtype = torch.float32) -> Tensor:
    """``dW_r = sum_b dr_b @ x_b^T`` as ``[h, C]`` in ``out_dtype`` (accumulated in float32):
    the plain 1x1 conv's own weight gradient, ``aten.convolution_backward`` (cuDNN on CUDA),
    so that in float32 it uses TF32 exactly when the plain path does
    (``torch.backends.cudnn.allow_tf32``; a cuBLAS product would follow
    ``torch.backends.cuda.matmul.allow_tf32`` instead). One read of x as it is: channels_last
    x and dr go to cuDNN without a copy, and NCHW needs no [B, h, C] intermediate. Not Triton:
    it needs ``dr``, which exists only after the gate's reductions, so it cannot share their
    pass over x."""
    _check_x(x, "reduce_weight_grad")
    b, ch, h, w = x.shape
    if dr.dim() != 4 or dr.shape[0] != b or tuple(dr.shape[2:]) != (h, w):
        raise ValueError(
            f"reduce_weight_grad: dr must be [B, h, H, W] with B, H, W = {b}, {h}, {w}, got "
            f"{list(dr.shape)}."
        )
    k = dr.shape[1]
    if x.numel() == 0:
        return torch.zeros(k, ch, device=x.device, dtype=out_dtype)
    dw = torch.nn.grad.conv2d_weight(x, (k, ch, 1, 1), dr.to(x.dtype))
    return dw.reshape(k, ch).to(out_dtype)  # a view: [h, C, 1, 1] in either layout


# ---------------------------------------------------------------------------------------------
# The channel MLP (one hidden layer)

MLP_MAX_HIDDEN = 128  # hidden units one program holds (BAM-ResNet-50: 16, 32, 64)


def _mlp_tile(b: int, ch: int, hid: int, fma: bool) -> tuple[int, int, int, int]:
    """(BB, BH, BC, num_warps): BB rows of the batch and BC channels per step, all hidden
    units at once. ``fma``: float32 dots without TF32 (no tensor cores) take half the channels
    a step: at 64 they spilled 52-252 bytes on sm_80 at C = 1024 (tests/cuda/
    compile_targets.py)."""
    bc = max(16, min(32 if fma else 64, _np2(ch)))
    return max(16, min(32, _np2(b))), max(16, _np2(hid)), bc, 4


def mlp_forward(pooled, w1, b1, gamma, beta, running_mean, running_var, w2, b2, train: bool,
                momentum: float, eps: float):  # fmt: skip
    """``Linear -> BatchNorm1d -> ReLU -> Linear`` on pooled ``[B, C]``, in one launch, in
    pooled's dtype (the weights may be any float dtype: cast as they are read). Returns
    ``(z, a, mean, invstd, c)``: the hidden Linear's output, the ReLU's, the BatchNorm's
    statistics (float32; the running ones when not ``train``) and the output. In training the
    running statistics are updated in place, as nn.BatchNorm1d does."""
    _check_x(pooled[:, :, None, None], "mlp_forward")
    b, ch = pooled.shape
    hid = w1.shape[0]
    if hid > MLP_MAX_HIDDEN or tuple(w1.shape) != (hid, ch) or tuple(w2.shape) != (ch, hid):
        raise ValueError(
            f"mlp_forward: weights must be [h, C] and [C, h] with h <= {MLP_MAX_HIDDEN}, C = "
            f"{ch}; got {list(w1.shape)} and {list(w2.shape)}."
        )
    pooled = pooled.contiguous()
    dt, dev = pooled.dtype, pooled.device
    z, a = torch.empty(b, hid, dtype=dt, device=dev), torch.empty(b, hid, dtype=dt, device=dev)
    mean = torch.empty(hid, dtype=torch.float32, device=dev)
    invstd = torch.empty(hid, dtype=torch.float32, device=dev)
    c = torch.empty(b, ch, dtype=dt, device=dev)
    prec = _precision(dt, "matmul")
    bb, bh, bc, warps = _mlp_tile(b, ch, hid, _fma(dt, "matmul"))
    _launch(
        _mlp_fwd_kernel, (1,), pooled, w1, b1, gamma, beta, running_mean, running_var, w2, b2,
        z, a, mean, invstd, c, b, float(momentum), float(eps), C=ch, H=hid, TRAIN=train,
        PRECISION=prec, UPCAST=_upcast(dt), BB=bb, BH=bh, BC=bc, num_warps=warps,
    )  # fmt: skip
    return z, a, mean, invstd, c


def mlp_backward(dc, pooled, z, a, mean, invstd, gamma, w1, w2, train: bool, need_dpool: bool,
                 b1, beta, b2):  # fmt: skip
    """The backward of :func:`mlp_forward` in one launch, from what it returned:
    ``(dw1, db1, dgamma, dbeta, dw2, db2, dpool)``, each weight's grad in that weight's dtype
    (``b1``, ``beta``, ``b2`` are passed for their dtypes), dpool in pooled's dtype (None
    unless ``need_dpool``)."""
    b, ch = pooled.shape
    hid = w1.shape[0]
    dt, dev = pooled.dtype, pooled.device
    dc = dc.contiguous()
    grads = [torch.empty(t.shape, dtype=t.dtype, device=dev) for t in (w1, b1, gamma, beta, w2, b2)]
    dpool = torch.empty(b, ch, dtype=dt, device=dev) if need_dpool else None
    scratch = torch.empty(2, b, hid, dtype=dt, device=dev)  # da, dz
    prec = _precision(dt, "matmul")
    bb, bh, bc, warps = _mlp_tile(b, ch, hid, _fma(dt, "matmul"))
    _launch(
        _mlp_bwd_kernel, (1,), dc, pooled, z, a, mean, invstd, gamma, w1, w2, *grads,
        dpool if need_dpool else dc, scratch[0], scratch[1], b, C=ch, H=hid, TRAIN=train,
        NEED_DPOOL=need_dpool, PRECISION=prec, UPCAST=_upcast(dt), BB=bb, BH=bh, BC=bc,
        num_warps=warps,
    )  # fmt: skip
    return (*grads, dpool)

