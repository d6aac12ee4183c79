"""Where the Triton path may run, and where it is the default.

The Triton kernels of :mod:`torch_bam.cuda.kernels` declare what they support; this module is
the one place that checks it:

- NVIDIA CUDA only: a ROCm (HIP) build of torch has no kernel built and checked for it (Triton
  refuses the kernels' ``input_precision="tf32"`` dots on gfx90a and gfx1100);
- compute capability 8.0 to 9.0 (sm_80 .. sm_90): the capabilities the kernels are compiled
  for by tests/cuda/compile_targets.py (sm_80, sm_89, sm_90: the variants BAM-ResNet-50 uses
  fit their shared memory and registers). Below sm_80 Triton has no bfloat16 ``tl.dot`` and
  below sm_70 ptxas rejects the counters' ``.acq_rel`` atomics; newer GPUs have not been
  compiled for yet;
- the triton releases the tests run with (:data:`TRITON_TESTED`);
- on CPU tensors, only under the Triton interpreter (``TRITON_INTERPRET=1``), as CI runs it.

:func:`reasons` says why the path cannot run on a device (nothing where it can);
:func:`require` turns that into one error line naming the reason and the fix, for a forced
``set_backend("triton")``. :func:`default_on` says whether ``backend="auto"`` picks the Triton
path: only where it can run *and* the GPU's class (vendor, compute capability) is in
``verified.json``, the table of classes on which ``benchmarks/gpu.py`` found it correct and
faster than the plain path, with the date, GPU and versions of that run. The table ships empty
until such a run; everywhere else CUDA tensors take the plain path (cuDNN layers and the ATen
gate), the one measured on a GPU.

Only the standard library and torch are imported here (no triton): the dispatcher asks these
questions on every call, torch.compile traces them, and the answers are kept per device.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import torch

__all__ = ["CAPABILITIES", "TRITON_TESTED", "default_on", "reasons", "require", "verified"]

CAPABILITIES = ((8, 0), (9, 0))  # lowest and highest (major, minor) compiled for
TRITON_TESTED = ((3, 6), (4, 0))  # triton >= 3.6, < 4: what the tests and the GPU runs use
TABLE = Path(__file__).with_name("verified.json")

_PLAIN = "torch_bam.functional.set_backend('auto') (the plain path)"
_REASONS: dict = {}  # (device type, index) -> [(reason, fix)]: a device does not change
_VERIFIED: list = []  # the table's entries, loaded once


def _find_triton_version() -> str | None:
    """The installed triton's version without importing it (which takes seconds)."""
    for dist in ("triton", "pytorch-triton"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    if importlib.util.find_spec("triton") is not None:  # a source build without metadata
        import triton

        return triton.__version__
    return None


_INSTALLED = _find_triton_version()  # at import: importlib.metadata does not trace


def _triton_version() -> str | None:
    return _INSTALLED


def _version_tuple(v: str) -> tuple[int, int]:
    parts = []
    for p in v.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (2 - len(parts)))  # type: ignore[return-value]


def _interpreted() -> bool:
    """Whether the kernels run under the Triton interpreter (decided when triton is imported;
    asked only under backend "triton", which imports them anyway)."""
    from . import kernels

    return kernels.INTERPRETED


def _index(device: torch.device) -> int:
    return torch.cuda.current_device() if device.index is None else device.index


def _triton_reasons() -> list[tuple[str, str]]:
    got = _REASONS.get("triton")
    if got is None:
        got = _REASONS["triton"] = _check_triton()
    return got


def _check_triton() -> list[tuple[str, str]]:
    version = _triton_version()
    if version is None:
        return [("triton is not installed", f"pip install 'triton>=3.6,<4', or {_PLAIN}")]
    low, high = TRITON_TESTED
    if not low <= _version_tuple(version) < high:
        return [(
            f"triton {version} is not a tested release (tested: >= {low[0]}.{low[1]}, "
            f"< {high[0]}.{high[1]})",
            f"pip install 'triton>=3.6,<4', or {_PLAIN}",
        )]  # fmt: skip
    return []


def _device_reasons(device: torch.device) -> list[tuple[str, str]]:
    out = list(_triton_reasons())  # a copy: the cached list is shared
    if device.type == "cpu":
        if not _interpreted():
            out.append((
                "CPU tensors run the Triton kernels only under the Triton interpreter",
                "set TRITON_INTERPRET=1 before triton is imported, move the tensors to an NVIDIA "
                f"GPU, or {_PLAIN}",
            ))  # fmt: skip
        return out
    if device.type != "cuda":
        return out + [(f"no Triton kernels for {device.type} tensors",
                       f"move them to an NVIDIA GPU, or {_PLAIN}")]  # fmt: skip
    if torch.version.hip is not None:
        return out + [(
            "this is a ROCm (HIP) build of torch: the kernels are built and checked for NVIDIA "
            "CUDA only",
            _PLAIN,
        )]  # fmt: skip
    cc = tuple(torch.cuda.get_device_capability(_index(device)))
    low, high = CAPABILITIES
    if not low <= cc <= high:
        out.append((
            f"compute capability {cc[0]}.{cc[1]} (sm_{cc[0]}{cc[1]}) is outside the "
            f"sm_{low[0]}{low[1]}..sm_{high[0]}{high[1]} the kernels are compiled and checked for",
            _PLAIN,
        ))  # fmt: skip
    return out


def _key(device: torch.device) -> tuple:
    return (device.type, _index(device) if device.type == "cuda" else None)


def reasons(device: torch.device | str) -> list[tuple[str, str]]:
    """``[(reason, fix), ...]``: why the Triton path cannot run on ``device`` (empty where it
    can). Kept per GPU: clear with :func:`clear_cache` (tests faking a device do); on CPU the
    interpreter is asked each time."""
    device = torch.device(device)
    if device.type == "cpu":
        return _device_reasons(device)
    key = _key(device)
    got = _REASONS.get(key)
    if got is None:
        got = _REASONS[key] = _device_reasons(device)
    return got


def require(device: torch.device | str) -> None:
    """Raise one RuntimeError line if the Triton path cannot run on ``device``."""
    why = reasons(device)
    if why:
        reason, fix = why[0]
        raise RuntimeError(
            f"torch_bam: backend 'triton' cannot run on {torch.device(device)}: {reason}. "
            f"Fix: {fix}."
        )


def _table() -> list[dict]:
    if not _VERIFIED:
        _VERIFIED.append(json.loads(TABLE.read_text())["classes"])
    return _VERIFIED[0]


def gpu_class(device: torch.device | str) -> tuple[str, tuple[int, int]] | None:
    """``("nvidia", (major, minor))`` for an NVIDIA CUDA device, else None."""
    device = torch.device(device)
    if device.type != "cuda" or torch.version.hip is not None:
        return None
    return "nvidia", tuple(torch.cuda.get_device_capability(_index(device)))


def verified(device: torch.device | str) -> dict | None:
    """The table's entry for ``device``'s GPU class (vendor, compute capability), or None."""
    cls = gpu_class(device)
    if cls is None:
        return None
    for entry in _table():
        if entry["vendor"] == cls[0] and tuple(entry["capability"]) == cls[1]:
            return entry
    return None


def default_on(device: torch.device | str) -> bool:
    """Whether ``backend="auto"`` runs the Triton path on ``device``: it can run there, and
    ``benchmarks/gpu.py`` found it correct and faster on this GPU class."""
    device = torch.device(device)
    key = ("default",) + _key(device)
    got = _REASONS.get(key)
    if got is None:
        got = _REASONS[key] = device.type == "cuda" and not reasons(device) and bool(
            verified(device)
        )
    return got


def clear_cache() -> None:
    """Forget what was found per device and the loaded table (for tests that fake a GPU)."""
    _REASONS.clear()
    _VERIFIED.clear()

