"""Ship a trained network: a shareable folder, ONNX or TorchScript, checked against the original.

:func:`load_source` reads what training and the demo write (a Lightning ``.ckpt`` of
``torch-bam fit``, a run directory, a ``torch-bam/1`` checkpoint), a folder
:func:`torch_bam.save_pretrained` wrote, or published weights by tag
(``bam_resnet50.ptcv_in1k``). :func:`export` writes one format, runs the original and the
export on the same images, and refuses (nothing written) when they differ by more than the
format's tolerance:

- ``folder``: timm's ``config.json`` + ``model.safetensors`` (BatchNorms kept: it can be
  fine-tuned), loaded back with ``create_model("local-dir:...")``. The same weights, bit for bit,
  run by the same code: the outputs must be *equal* (tolerance 0).
- ``onnx`` and ``torchscript``: BatchNorms folded (:func:`torch_bam.fold.fold_bam`, everywhere),
  then ``torch.onnx.export`` (dynamic batch size; checked in onnxruntime at two batch sizes) or
  ``torch.jit.script`` (checked after ``torch.jit.load``). Folding rounds each folded weight
  once (``w * gamma / sqrt(var + eps)``: about one float32 ulp), and the runtime sums each
  convolution in its own order (reassociation: up to about ``sqrt(K)`` ulps for a sum of ``K``
  terms, a few dozen for ``K`` = 3x3x512), and these compound over the network's layers. The
  tolerance is ``1024 * eps(float32)`` (1.2e-4) of the largest output magnitude: a thousand
  ulps of the logits' scale, far above that rounding and far below any real error (a wrong
  weight, a dropped layer or a mis-folded BatchNorm moves logits by whole percent).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UsageError

__all__ = [
    "FORMATS",
    "ExportReport",
    "Source",
    "check_output",
    "export",
    "load_source",
    "tolerance",
]

FORMATS = ("folder", "onnx", "torchscript")
EPS = torch.finfo(torch.float32).eps
_RELATIVE = {"folder": 0.0, "onnx": 1024 * EPS, "torchscript": 1024 * EPS}
_RUNTIME = {
    "folder": "folder (create_model local-dir)",
    "onnx": "onnxruntime",
    "torchscript": "torch.jit.load",
}


def tolerance(fmt: str, reference: torch.Tensor) -> float:
    """The largest difference allowed between the original's outputs ``reference`` and the
    export's (see the module docstring): 0 for a folder, ``1024 * eps(float32) * max|ref|``
    for the folded formats."""
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return _RELATIVE[fmt] * max(scale, 1e-3)


@dataclass
class Source:
    """A network to ship, with what the folder and its model card record about it."""

    model: nn.Module  # eval mode, BatchNorms not folded
    origin: str  # the file, folder or tag it came from
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)  # preprocessing overrides
    dataset: str | None = None
    measured: str | None = None  # "validation top-1 error 0.12 (metrics.json, ...)"


@dataclass
class ExportReport:
    format: str
    out: Path
    max_diff: float
    tolerance: float
    batch_sizes: tuple[int, ...]
    ms_original: float | None  # None: not timed (runs=0)
    ms_export: float | None
    folded: int

    def lines(self) -> list[str]:
        batch = max(self.batch_sizes)
        sizes = " and ".join(map(str, self.batch_sizes))
        folded = f", {self.folded} BatchNorms folded" if self.folded else ""
        lines = [
            f"wrote {self.out} ({self.format}{folded})",
            f"largest difference from the original: {self.max_diff:.3g} "
            f"(tolerance {self.tolerance:.3g}; batch sizes {sizes})",
        ]
        if self.ms_original is not None:
            lines.append(
                f"speed on this machine (CPU, batch {batch}, median ms per batch): original "
                f"{self.ms_original:.3g}, {_RUNTIME[self.format]} {self.ms_export:.3g}"
            )
        return lines


# --- reading what to ship ------------------------------------------------------------------


def _preprocessing_cfg(meta: dict, where: str) -> tuple[dict, str | None]:
    """timm's preprocessing fields from a checkpoint's (viz.checkpoint.preprocessing)."""
    if not any(k in meta for k in ("image_size", "mean", "std")):
        return {}, None
    from .viz.checkpoint import preprocessing

    p = preprocessing(meta, where)
    cfg = dict(
        input_size=(p.in_chans, p.image_size, p.image_size),
        mean=tuple(p.mean),
        std=tuple(p.std),
        interpolation=p.interpolation,
        crop_pct=p.image_size / p.resize_size,
        crop_mode="center",
    )
    return cfg, p.dataset


def _best_checkpoint(run: Path) -> Path:
    """The checkpoint ModelCheckpoint recorded as best in ``run/checkpoints/last.ckpt``
    (read in the run's current place), else ``last.ckpt`` itself."""
    from ._io import load_weights_only

    last = run / "checkpoints" / "last.ckpt"
    ckpt = load_weights_only(last, "Pass a run directory of torch-bam fit, or one .ckpt.")
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "Checkpoint" in str(key) and isinstance(state, dict):
            best = state.get("best_model_path")
            if isinstance(best, str) and best:
                moved = last.parent / Path(best).name
                if moved.is_file():
                    return moved
    return last


def _metrics_line(run: Path, ckpt: Path) -> str | None:
    """The run's validation error, from its metrics.json, saying where it came from and
    whether it was measured on ``ckpt`` (the same global step) or on another checkpoint."""
    from ._io import load_weights_only

    path = run / "metrics.json"
    try:
        data = json.loads(path.read_text())
        step = load_weights_only(ckpt, "", mmap=True).get("global_step")
    except (OSError, ValueError):
        return None
    for stage in ("validate", "fit"):
        entry = data.get(stage)
        if not isinstance(entry, dict):
            continue
        errs = {k: v for k, v in entry.items() if k.startswith("val/") and k.endswith("_err")}
        if not errs:
            continue
        measured = entry.get("checkpoint") or {}
        values = ", ".join(f"{k} {v:.4f}" for k, v in sorted(errs.items()))
        where = (
            f"{path}, stage '{stage}', epoch {entry.get('epoch')}, step {entry.get('global_step')}"
        )
        if measured.get("global_step") != step:
            where += f"; measured on {measured.get('path')}, not on this checkpoint (step {step})"
        return f"{values} on the run's validation set ({where})"
    return None


def load_source(spec: str, file: str | None = None) -> Source:
    """The network ``spec`` names: a checkpoint file, a run directory, a model folder, or a
    published tag (``file``: its weight file, else the download cache)."""
    from .models import create_model, list_pretrained
    from .models._hub import CONFIG_NAME

    path = Path(spec).expanduser()
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        model = create_model(f"local-dir:{path}", pretrained=True)
        return Source(model.eval(), str(path))
    if path.is_dir() and (path / "checkpoints" / "last.ckpt").is_file():
        ckpt = _best_checkpoint(path)
        source = _from_checkpoint(ckpt)
        source.measured = _metrics_line(path, ckpt)
        return source
    if path.is_dir():
        raise UsageError(
            f"{spec} is a folder with neither config.json nor checkpoints/last.ckpt. Pass a "
            f"run directory of torch-bam fit, a model folder, or a checkpoint file."
        )
    if path.exists() or os.sep in spec or spec.endswith((".ckpt", ".pt", ".pth")):
        source = _from_checkpoint(path)
        run = path.parent.parent
        if path.parent.name == "checkpoints" and (run / "metrics.json").is_file():
            source.measured = _metrics_line(run, path)
        return source
    if spec in list_pretrained():
        model = create_model(spec, pretrained=True, file=file)
        cfg = model.pretrained_cfg
        top1 = cfg.get("published_top1")
        measured = (
            f"top-1 accuracy {top1}% on ImageNet-1k validation, as published by the weights' "
            f"authors ({cfg.get('origin_url')}); not measured here"
            if top1
            else None
        )
        return Source(model.eval(), spec, dataset="ImageNet-1k", measured=measured)
    raise UsageError(
        f"{spec}: no such file or folder, and not a published tag ({', '.join(list_pretrained())})."
        f" Pass a .ckpt of torch-bam fit, a run directory, a checkpoint of the demo, or a tag."
    )


def _from_checkpoint(path: Path) -> Source:
    from .viz.checkpoint import load_checkpoint

    model, meta = load_checkpoint(str(path))
    cfg, dataset = _preprocessing_cfg(meta, str(path))
    return Source(model.eval(), str(path), cfg, dataset or meta.get("dataset"))


# --- the model card ------------------------------------------------------------------------


def model_card(source: Source, model: nn.Module) -> str:
    """A short README.md: architecture, data, preprocessing, measured error and its origin."""
    cfg = {**model.pretrained_cfg, **source.pretrained_cfg}
    arch = cfg.get("architecture", "?")
    args = {k: v for k, v in getattr(model, "_model_args", {}).items()}
    params = sum(p.numel() for p in model.parameters())
    c, h, w = cfg.get("input_size", (3, 224, 224))
    crop = cfg.get("crop_pct", 1.0)
    lines = [
        f"# {arch}",
        "",
        f"A BAM network (Bottleneck Attention Module, Park et al., BMVC 2018, "
        f"arXiv:1807.06514) saved by torch-bam from `{source.origin}`.",
        "",
        f"- architecture: `{arch}` ({params:,} parameters), model arguments "
        f"`{json.dumps(args, sort_keys=True)}`",
        f"- data: {source.dataset or 'not recorded'}, {getattr(model, 'num_classes', '?')} classes",
        f"- preprocessing: {c} channel(s), shorter side resized to {round(h / crop)} "
        f"({cfg.get('interpolation')}), centre crop {h}x{w}, scaled to [0, 1], then "
        f"(x - mean) / std with mean {list(cfg.get('mean', ()))}, std {list(cfg.get('std', ()))}",
        f"- measured: {source.measured or 'no measurement recorded'}",
        "",
        "Load it with torch-bam (or timm, after `import torch_bam`):",
        "",
        "```python",
        "import torch_bam",
        'model = torch_bam.create_model("local-dir:PATH", pretrained=True).eval()  # PATH: here',
        "```",
        "",
    ]
    return "\n".join(lines)


# --- writing and checking ------------------------------------------------------------------


def _images(cfg: dict, batch: int, seed: int = 0) -> torch.Tensor:
    """``batch`` random images, normalised as the model's preprocessing does."""
    c, h, w = cfg.get("input_size", (3, 224, 224))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, c, h, w, generator=g)
    mean = torch.tensor(cfg.get("mean", (0.0,) * c), dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", (1.0,) * c), dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def _median_ms(fns, x, runs: int) -> list[float]:
    """Median milliseconds per call of each of ``fns`` on ``x``, timed in turns (one call of
    each per turn), so that a machine's changing load weighs on all of them alike."""
    for fn in fns:
        # Warm-up: allocations, first-call compilation, backend choices. On a CPU eager
        # PyTorch's first several calls can take many times longer than the later ones.
        for _ in range(max(5, runs)):
            fn(x)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, record in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn(x)
            record.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def check_output(fmt: str, out: Path, runs: int) -> None:
    """Refuse an unknown format, a bad ``runs`` or an output path that cannot be written,
    before any work (:class:`UsageError`)."""
    from ._io import check_output_dir

    if runs < 0:
        raise UsageError(f"--runs {runs}: the timed calls must be 0 (no timing) or more.")
    if fmt not in FORMATS:
        raise UsageError(f"--to {fmt!r}: unknown format. Choose one of {', '.join(FORMATS)}.")
    if fmt == "folder":
        check_output_dir(out.parent, "--out")
        from .models._hub import _check_target

        _check_target(out)
    else:
        if out.is_dir():
            raise UsageError(f"--out {out} is a folder; {fmt} writes one file. Name a file.")
        check_output_dir(out.parent, "--out")


@contextlib.contextmanager
def _staged_file(out: Path):
    """A temporary file beside ``out``, renamed to it on success, removed on failure."""
    from .models._hub import remove_empty

    missing = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".torch-bam-tmp-", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        remove_empty(missing)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _folded(model: nn.Module) -> nn.Module:
    import copy

    from .fold import fold_bam

    return fold_bam(copy.deepcopy(model).eval(), everywhere=True)


def _onnx_runner(model: nn.Module, x: torch.Tensor, path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError(
            "--to onnx needs onnx, onnxscript and onnxruntime: pip install 'torch-bam[export]'."
        ) from None
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,  # one file (models under ONNX's 2 GB limit)
            dynamo=True,
            verbose=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"image": images.numpy()})[0])


def _torchscript_runner(model: nn.Module, path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript
        torch.jit.save(torch.jit.script(model), str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    return loaded


def export(
    source: Source,
    fmt: str,
    out: str | os.PathLike,
    *,
    batch_sizes: tuple[int, int] = (1, 4),
    runs: int = 10,
) -> ExportReport:
    """Write ``source``'s network to ``out`` as ``fmt``, check it, return what was measured.

    The check runs the original (not folded, eager PyTorch) and the export on the same
    images (random pixels in [0, 1], normalised as in training) at each of ``batch_sizes``; a
    largest difference above :func:`tolerance` raises :class:`UsageError` and leaves nothing
    at ``out``. Speeds are medians of ``runs`` calls on the largest batch, on this machine
    (``runs=0``: not timed), timed in turns.
    """
    out = Path(out).expanduser()
    check_output(fmt, out, runs)
    model = source.model.eval()
    cfg = {**model.pretrained_cfg, **source.pretrained_cfg}
    images = [_images(cfg, b, seed=i) for i, b in enumerate(batch_sizes)]
    with torch.inference_mode():
        reference = [model(x) for x in images]
    folded = 0
    with contextlib.ExitStack() as stack:
        if fmt == "folder":
            from .models import create_model
            from .models._hub import _staged, save_pretrained

            tmp = stack.enter_context(_staged(out)) / "model"
            save_pretrained(
                model,
                tmp,
                pretrained_cfg=source.pretrained_cfg,
                model_card=model_card(source, model),
            )
            run = create_model(f"local-dir:{tmp}", pretrained=True).eval()
        else:
            tmp = stack.enter_context(_staged_file(out))
            deployed = _folded(model)
            folded = _count_bn(model) - _count_bn(deployed)
            # torch.export takes a batch of 1 for a fixed size: show it a larger one.
            example = images[-1] if len(images[-1]) > 1 else _images(cfg, 2)
            try:
                if fmt == "onnx":
                    run = _onnx_runner(deployed, example, tmp)
                else:
                    run = _torchscript_runner(deployed, tmp)
            except UsageError:
                raise
            except Exception as e:  # an operator the format lacks, say: one line, not pages
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise UsageError(
                    f"the {fmt} export of {source.origin} failed ({type(e).__name__}: {first}); "
                    f"nothing was written to {out}. Try the other format."
                ) from None
        with torch.inference_mode():
            diffs = [
                (run(x) - ref).abs().max().item() for x, ref in zip(images, reference, strict=True)
            ]
        worst = max(diffs)
        allowed = min(tolerance(fmt, ref) for ref in reference)
        if not worst <= allowed:  # NaN fails too
            raise UsageError(
                f"the {fmt} export differs from the original by {worst:.3g}, more than its "
                f"tolerance {allowed:.3g}; nothing was written to {out}. Report it with the "
                f"checkpoint and the torch / onnxruntime versions."
            )
        ms_original = ms_export = None
        if runs:
            with torch.inference_mode():
                ms_original, ms_export = _median_ms((model, run), images[-1], runs)
        if fmt == "folder":  # the staged folder's content becomes the folder itself
            for p in tmp.iterdir():
                os.replace(p, tmp.parent / p.name)
            tmp.rmdir()
    return ExportReport(
        fmt, out, worst, allowed, tuple(batch_sizes), ms_original, ms_export, folded
    )
