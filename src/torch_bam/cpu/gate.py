"""The gate op's CPU kernel: the C code in ``bam_gate_cpu.c``, built, cached and called
through ctypes, and registered with ``torch.library`` as the "cpu" kernel of
``torch_bam::bam_gate``, its backward and its in-place form (``torch_bam.functional`` defines
the ops).

Which code a CPU tensor gets, by backend (``torch_bam.functional.set_backend``):

- ``"auto"``: the C kernel for float32 (other dtypes, or no C compiler: the ATen composition,
  with one warning for the missing compiler);
- ``"aten"``: the ATen composition;
- ``"triton"``: the CUDA room's Triton kernel (``torch_bam.cuda.gate``), which runs CPU tensors
  under the Triton interpreter (``TRITON_INTERPRET=1``). To torch's dispatcher the interpreter
  is just the CPU, so CPU tensors arrive here and are handed on: this is how CI, without a GPU,
  runs the code a GPU runs.

Why plain C + ctypes and not ``torch.utils.cpp_extension``: the kernel needs no torch headers,
so it compiles in well under a second instead of the ~40 s a torch C++ extension takes, and
the shared object is cached (keyed by source, compiler and flags) in ``TORCH_EXTENSIONS_DIR``
(default ``~/.cache/torch_extensions``), with its SHA-256 beside it (``.sha256``): a cached
file that does not match (truncated, damaged, or from before the hash) is rebuilt, never
loaded. benchmarks/RESULTS.md has the timings against an ATen composition and against
torch.compile. If the build fails (no compiler), ``load()`` returns None and the registered
kernels fall back to the ATen composition.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .. import functional
from ..cuda import gate as _cuda_gate

_SOURCE = Path(__file__).with_name("bam_gate_cpu.c")
_FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_warned_fallback = False

_i64, _int, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p


def _cache_dir() -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions"
    )
    return Path(root) / "torch_bam"


def _compiler() -> str:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"


def _build() -> ctypes.CDLL:
    cc = _compiler()
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + cc.encode() + " ".join(_FLAGS).encode()).hexdigest()[:16]
    target = _cache_dir() / f"bam_gate_cpu_{key}.so"
    digest = target.with_suffix(".sha256")
    # Load only a file whose bytes are those the build wrote: a truncated or damaged .so (a full
    # disk, a killed copy) would be mapped as it is, and die with SIGBUS on first use.
    if not (target.exists() and _intact(target, digest)):
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename: a crash or a parallel build never leaves a
        # half-written .so under the final name. The hash goes first, so that a .so under the
        # final name always has one to be checked against.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            subprocess.run(
                [cc, *_FLAGS, "-o", tmp, str(_SOURCE), "-lm"],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            )
            _write_atomic(digest, _sha256(Path(tmp)))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    lib.bam_gate_fwd.argtypes = [_ptr] * 4 + [_i64] * 3 + [_int] * 3
    lib.bam_gate_fwd.restype = None
    lib.bam_gate_bwd.argtypes = [_ptr] * 10 + [_i64] * 4 + [_int] * 3
    lib.bam_gate_bwd.restype = None
    lib.bam_gate_prep_sum.argtypes = [_ptr] * 4 + [_i64] * 2
    lib.bam_gate_prep_sum.restype = _int
    return lib


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(so: Path, digest: Path) -> bool:
    """Whether ``so`` has the hash its build recorded in ``digest`` (none recorded: no)."""
    try:
        return digest.read_text().strip() == _sha256(so)
    except OSError:
        return False


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL | None:
    """The compiled kernel, or None (with the reason in ``last_error()``) if it cannot build."""
    global _lib, _error
    if _lib is not None or _error is not None:
        return _lib
    with _lock:
        if _lib is None and _error is None:
            try:
                _lib = _build()
            except (OSError, subprocess.SubprocessError) as e:
                detail = getattr(e, "stderr", None) or ""
                _error = f"{type(e).__name__}: {e} {detail}".strip()
    return _lib


def last_error() -> str | None:
    return _error


def reset() -> None:
    """Forget the loaded kernel and any build error (for tests)."""
    global _lib, _error
    with _lock:
        _lib, _error = None, None


# The kernel's `mode` (bam_gate_cpu.c): how the gate is computed from the operands a, b.
_SUM_EXP, _PRODUCT, _SUM = 0, 1, 2


def _prep(lib, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, product: bool):
    b, ch, h, w = x.shape
    cl = int(not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last))
    if not cl:
        x = x.contiguous()
    c = c.reshape(b, ch).float().contiguous()
    s = s.reshape(b, h * w).float().contiguous()
    if product:
        return x, c, s, c, s, cl, _PRODUCT
    # sigmoid(c + s) = 1 / (1 + exp(-c) exp(-s)): B*(C + HW) exps instead of B*C*HW, exact
    # while each exp is a normal float; for wider logits the kernel adds c + s first.
    a, bb = torch.empty_like(c), torch.empty_like(s)
    factored = lib.bam_gate_prep_sum(
        c.data_ptr(), s.data_ptr(), a.data_ptr(), bb.data_ptr(), c.numel(), s.numel()
    )
    if factored:
        return x, c, s, a, bb, cl, _SUM_EXP
    return x, c, s, c, s, cl, _SUM


def forward(lib, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, product: bool, out=None):
    """y = x * (1 + sigmoid(l)); ``out=x`` (x contiguous or channels_last) works in place."""
    x, c, s, a, bb, cl, mode = _prep(lib, x, c, s, product)
    b, ch, h, w = x.shape
    y = torch.empty_like(x) if out is None else out
    lib.bam_gate_fwd(
        x.data_ptr(), a.data_ptr(), bb.data_ptr(), y.data_ptr(),
        b, ch, h * w, cl, mode, torch.get_num_threads(),
    )  # fmt: skip
    return y


def backward(lib, dy: torch.Tensor, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, product):
    x, c, s, a, bb, cl, mode = _prep(lib, x, c, s, product)
    b, ch, h, w = x.shape
    hw = h * w
    dy = dy.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    nt = torch.get_num_threads()
    # Enough chunks per image that small batches still keep every thread busy.
    nchunk = max(1, min(ch if not cl else hw, -(-4 * nt // max(b, 1))))  # b = 0: no tasks
    part = torch.empty(b * nchunk, hw if not cl else ch)
    dx = torch.empty_like(x)
    dc = torch.empty(b, ch)
    ds = torch.empty(b, hw)
    lib.bam_gate_bwd(
        dy.data_ptr(), x.data_ptr(), a.data_ptr(), bb.data_ptr(), c.data_ptr(), s.data_ptr(),
        dx.data_ptr(), dc.data_ptr(), ds.data_ptr(), part.data_ptr(),
        b, ch, hw, nchunk, cl, mode, nt,
    )  # fmt: skip
    part = part.view(b, nchunk, ch if cl else hw).sum(1)
    if cl:
        dc = part
    else:
        ds = part
    return dx, dc, ds.view(b, 1, h, w)


# ---------------------------------------------------------------------------------------------
# The registered kernels


def _fallback_warning(why: str) -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"torch_bam: the fused CPU kernel is unavailable ({why}); bam_gate falls back to "
            f"the ATen composition (same results, slower). Install a C compiler (cc/gcc) or "
            f"set CC to enable it.",
            RuntimeWarning,
            stacklevel=4,
        )


def _c_kernel(x: Tensor) -> ctypes.CDLL | None:
    """The compiled C kernel if it runs this call (backend "auto", float32), else None."""
    if x.dtype != torch.float32 or functional.get_backend() != "auto":
        return None
    lib = load()
    if lib is None:
        _fallback_warning(last_error() or "build failed")
    return lib


@functional.bam_gate_op.register_kernel("cpu")
def _gate_cpu(x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str) -> Tensor:
    if functional.get_backend() == "triton":
        return _cuda_gate.gate_forward(x, channel_logits, spatial_logits, combine)
    x, c, s, fmt = functional.gate_operands(x, channel_logits, spatial_logits, combine)
    lib = _c_kernel(x)
    if lib is None:
        return functional.gate_forward_aten(x, c, s, combine)
    return forward(lib, x, c, s, combine == "product").contiguous(memory_format=fmt)


@functional.bam_gate_backward_op.register_kernel("cpu")
def _gate_backward_cpu(
    grad: Tensor, x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str
) -> tuple[Tensor, Tensor, Tensor]:
    if functional.get_backend() == "triton":
        return _cuda_gate.gate_backward(grad, x, channel_logits, spatial_logits, combine)
    xx, cc, ss, _ = functional.gate_operands(x, channel_logits, spatial_logits, combine)
    lib = _c_kernel(xx)
    if lib is None:
        return functional.gate_backward_aten(grad, x, channel_logits, spatial_logits, combine)
    dx, dc, ds = backward(lib, grad, xx, cc, ss, combine == "product")
    return functional.gate_grads(x, channel_logits, spatial_logits, dx, dc, ds)


@functional.bam_gate_inplace_op.register_kernel("cpu")
def _gate_inplace_cpu(
    x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str
) -> None:
    functional.gate_operands(x, channel_logits, spatial_logits, combine)  # the checks
    lib = _c_kernel(x)
    if lib is not None and (
        x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    ):
        forward(lib, x, channel_logits, spatial_logits, combine == "product", out=x)
    else:
        x.copy_(functional.bam_gate_op(x, channel_logits, spatial_logits, combine))
