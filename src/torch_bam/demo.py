"""``torch-bam demo``: the same small CNN trained with and without BAM, offline, on a CPU.

It trains ``small_cnn`` and ``bam_small_cnn`` with Lightning on the same data and seed, then
measures on the test set: top-1 error, parameters, GFLOPs (MACs for one image), training time,
and the pointing game of the deepest BAM whose spatial size is above 1. It writes into the run
directory: ``learning_curves.png``, ``attention.png``, ``report.md``, ``report.json`` and one
checkpoint per model (``<model>.pt``, see :mod:`torch_bam.viz.checkpoint`). Every number in the
report comes from this run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODELS = ("small_cnn", "bam_small_cnn")


# --- TEMPORARY dataset adapter -------------------------------------------------------------
# The project's cluttered-digits dataset (torch_bam.data, issue 5) was not available when this
# demo was written; this adapter renders its own until the demo is switched over to it.
@dataclass
class TemporaryClutteredDigits:
    """Digits 0-9 drawn with Pillow's built-in font on a canvas with clutter; with digit boxes."""

    images: Tensor  # [N, 1, S, S] float in [0, 1]
    labels: Tensor  # [N]
    boxes: Tensor  # [N, 4] (x0, y0, x1, y1), pixels, exclusive ends


def _glyphs(size: int) -> list[Tensor]:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    out = []
    for digit in range(10):
        im = Image.new("L", (2 * size, 2 * size))
        ImageDraw.Draw(im).text((size // 2, size // 4), str(digit), fill=255, font=font)
        t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(2 * size, 2 * size)
        ys, xs = (t > 0).nonzero(as_tuple=True)
        out.append(t[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].float() / 255)
    return out


def temporary_cluttered_digits(
    n: int, canvas: int = 32, clutter: int = 6, seed: int = 0
) -> TemporaryClutteredDigits:
    """``n`` images: one digit (scaled 35-55% of the canvas) plus ``clutter`` glyph fragments."""
    gen = torch.Generator().manual_seed(seed)
    sizes = sorted({max(8, round(canvas * f)) for f in (0.35, 0.45, 0.55)})
    glyphs = {s: _glyphs(s) for s in sizes}
    images = torch.zeros(n, 1, canvas, canvas)
    labels = torch.randint(0, 10, (n,), generator=gen)
    boxes = torch.zeros(n, 4, dtype=torch.long)
    frag = max(3, canvas // 8)
    for i in range(n):
        img = images[i, 0]
        for _ in range(clutter):  # fragments of random digits: local clutter, no class signal
            g = glyphs[sizes[0]][int(torch.randint(0, 10, (1,), generator=gen))]
            gy = int(torch.randint(0, max(1, g.shape[0] - frag), (1,), generator=gen))
            gx = int(torch.randint(0, max(1, g.shape[1] - frag), (1,), generator=gen))
            piece = g[gy : gy + frag, gx : gx + frag]
            y = int(torch.randint(0, canvas - piece.shape[0] + 1, (1,), generator=gen))
            x = int(torch.randint(0, canvas - piece.shape[1] + 1, (1,), generator=gen))
            region = img[y : y + piece.shape[0], x : x + piece.shape[1]]
            region.copy_(torch.maximum(region, piece))
        size = sizes[int(torch.randint(0, len(sizes), (1,), generator=gen))]
        g = glyphs[size][int(labels[i])]
        h, w = g.shape
        y = int(torch.randint(0, canvas - h + 1, (1,), generator=gen))
        x = int(torch.randint(0, canvas - w + 1, (1,), generator=gen))
        region = img[y : y + h, x : x + w]
        region.copy_(torch.maximum(region, g))
        boxes[i] = torch.tensor([x, y, x + w, y + h])
    images.add_(0.1 * torch.rand(images.shape, generator=gen)).clamp_(0, 1)
    return TemporaryClutteredDigits(images, labels, boxes)


# --- end of the temporary adapter ----------------------------------------------------------


def _load_dataset(dataset: str, train_size: int, test_size: int, canvas: int, seed: int, root):
    """``(train_x, train_y, test_x, test_y, test_boxes or None, num_classes)``."""
    if dataset == "cluttered-digits":
        train = temporary_cluttered_digits(train_size, canvas, seed=seed)
        test = temporary_cluttered_digits(test_size, canvas, seed=seed + 10_000)
        return train.images, train.labels, test.images, test.labels, test.boxes, 10
    from torchvision import datasets
    from torchvision.transforms.functional import pil_to_tensor

    def to_tensors(ds, n):
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
        xs, ys = zip(*(ds[int(i)] for i in idx), strict=True)
        x = torch.stack([pil_to_tensor(im.convert("RGB")).float() / 255 for im in xs])
        return F.interpolate(x, size=(canvas, canvas), mode="bilinear"), torch.tensor(ys)

    if dataset in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
        try:
            train_ds = cls(root, train=True, download=False)
            test_ds = cls(root, train=False, download=False)
        except RuntimeError as e:
            raise SystemExit(
                f"demo: {dataset} not found under {root!r} ({e}). The demo never downloads: "
                f"put the extracted dataset there, or pass --data-root."
            ) from None
        num_classes = 10 if dataset == "cifar10" else 100
    elif dataset.startswith("imagefolder:"):
        path = dataset.split(":", 1)[1]
        if not os.path.isdir(os.path.join(path, "train")) or not os.path.isdir(
            os.path.join(path, "val")
        ):
            raise SystemExit(
                f"demo: image folder {path!r} needs train/ and val/ subfolders, one folder per "
                f"class in each."
            )
        train_ds = datasets.ImageFolder(os.path.join(path, "train"))
        test_ds = datasets.ImageFolder(os.path.join(path, "val"))
        num_classes = len(train_ds.classes)
    else:
        raise SystemExit(
            f"demo: unknown --dataset {dataset!r}; use cluttered-digits, cifar10, cifar100 or "
            f"imagefolder:PATH."
        )
    train_x, train_y = to_tensors(train_ds, train_size)
    test_x, test_y = to_tensors(test_ds, test_size)
    return train_x, train_y, test_x, test_y, None, num_classes


def _lightning_module(model: nn.Module, lr: float, epochs: int, steps_per_epoch: int):
    """A minimal LightningModule (TEMPORARY until torch_bam.train from issue 5 is used)."""
    import lightning as L

    class DemoModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.history: dict[str, list[float]] = {"train_loss": [], "val_error": []}
            self._losses: list[float] = []
            self._errors: list[Tensor] = []

        def training_step(self, batch, _idx):
            x, y = batch
            loss = F.cross_entropy(self.model(x), y)
            self._losses.append(loss.item())
            return loss

        def on_train_epoch_end(self):
            self.history["train_loss"].append(sum(self._losses) / max(len(self._losses), 1))
            self._losses = []

        def validation_step(self, batch, _idx):
            x, y = batch
            self._errors.append((self.model(x).argmax(1) != y).float())

        def on_validation_epoch_end(self):
            if self.trainer.sanity_checking:
                self._errors = []
                return
            error = torch.cat(self._errors).mean().item()
            self.history["val_error"].append(error)
            self.log("val_error", error, prog_bar=True)
            self._errors = []

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return DemoModule()


def _deepest_spatial_bam(model: nn.Module, x: Tensor) -> str | None:
    """Name of the last BAM (in forward order) whose spatial map is larger than 1x1."""
    from .attention import record_attention

    with record_attention(model) as maps, torch.no_grad():
        model(x[:2])
    names = [
        n for n, m in maps.items() if m.spatial_logits.shape[-1] * m.spatial_logits.shape[-2] > 1
    ]
    return names[-1] if names else None


def _test_error_and_pointing(model, x, y, boxes, batch_size):
    from .attention import record_attention
    from .pointing import chance_rate, pointing_hits

    model.eval()
    wrong, hits, name = 0, [], None
    if boxes is not None:
        name = _deepest_spatial_bam(model, x) if _has_bam(model) else None
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        with torch.no_grad():
            if name is not None:
                with record_attention(model) as maps:
                    logits = model(xb)
                hits.append(
                    pointing_hits(
                        maps[name].spatial_logits, boxes[i : i + batch_size], x.shape[-2:]
                    )
                )
            else:
                logits = model(xb)
        wrong += int((logits.argmax(1) != y[i : i + batch_size]).sum())
    result = {"test_top1_error": wrong / len(x)}
    if boxes is not None:
        result["pointing_chance"] = chance_rate(boxes, tuple(x.shape[-2:])).mean().item()
        if hits:
            result["pointing_bam"] = name
            result["pointing_hit_rate"] = torch.cat(hits).float().mean().item()
    return result


def _has_bam(model: nn.Module) -> bool:
    from .bam import BAM

    return any(isinstance(m, BAM) for m in model.modules())


def _fmt(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key in ("parameters",):
        return f"{value:,}"
    if key in ("test_top1_error", "pointing_hit_rate", "pointing_chance"):
        return f"{100 * value:.2f}%"
    if key == "gflops":
        return f"{value:.4f}"
    if key == "train_seconds":
        return f"{value:.1f}"
    return str(value)


ROWS = [
    ("parameters", "parameters"),
    ("gflops", "GFLOPs (MACs, 1 image)"),
    ("test_top1_error", "test top-1 error"),
    ("train_seconds", "training time (s)"),
    ("pointing_hit_rate", "pointing game, deepest spatial BAM"),
    ("pointing_chance", "pointing game, chance (box / image area)"),
]


def format_table(results: dict[str, dict]) -> str:
    """A Markdown table, one column per model."""
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label in ROWS:
        cells = [_fmt(key, results[n].get(key)) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run(
    epochs: int = 3,
    seed: int = 0,
    out: str = "runs/demo",
    dataset: str = "cluttered-digits",
    train_size: int = 2000,
    test_size: int = 500,
    canvas: int = 32,
    batch_size: int = 64,
    lr: float = 0.1,
    progress: bool = True,
    data_root: str = "data",
) -> dict:
    """Run the demo; returns the report dict (also written to ``out/report.json``)."""
    try:
        import lightning as L
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            f"demo: {e.name} is not installed. The demo needs the train and viz extras: "
            f'pip install "torch-bam[train,viz]" (or pip install ".[train,viz]" in a clone).'
        ) from None
    from torch.utils.data import DataLoader, TensorDataset

    from .models import create_model
    from .profile import count_macs
    from .viz.attention import plot_attention_grid
    from .viz.checkpoint import save_checkpoint
    from .viz.curves import plot_learning_curves

    if epochs < 1 or train_size < 2 or test_size < 1:
        raise SystemExit("demo: need --epochs >= 1, --train-size >= 2 and --test-size >= 1.")
    os.makedirs(out, exist_ok=True)
    L.seed_everything(seed, verbose=False)
    train_x, train_y, test_x, test_y, boxes, num_classes = _load_dataset(
        dataset, train_size, test_size, canvas, seed, data_root
    )
    in_chans = train_x.shape[1]
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3)).clamp(min=1e-6)
    norm = lambda t: (t - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)  # noqa: E731
    train_x, test_x_n = norm(train_x), norm(test_x)
    steps = -(-len(train_x) // batch_size)

    results: dict[str, dict] = {}
    histories: dict[str, dict[str, list[float]]] = {}
    models: dict[str, nn.Module] = {}
    for name in MODELS:
        L.seed_everything(seed, verbose=False)  # same init draw order and same batches
        model = create_model(name, num_classes=num_classes, in_chans=in_chans)
        module = _lightning_module(model, lr, epochs, steps)
        train_loader = DataLoader(
            TensorDataset(train_x, train_y), batch_size=batch_size, shuffle=True, drop_last=True
        )
        val_loader = DataLoader(TensorDataset(test_x_n, test_y), batch_size=256)
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            num_sanity_val_steps=0,
        )
        if progress:
            print(f"training {name}")
        t0 = time.perf_counter()
        trainer.fit(module, train_loader, val_loader)
        train_seconds = time.perf_counter() - t0
        model.eval()
        macs, _ = count_macs(model, test_x_n[:1])
        r = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "gflops": macs / 1e9,
            "train_seconds": train_seconds,
        }
        r.update(_test_error_and_pointing(model, test_x_n, test_y, boxes, 256))
        if "pointing_hit_rate" not in r:
            r["pointing_hit_rate"] = None
        results[name] = r
        histories[name] = module.history
        models[name] = model
        save_checkpoint(
            os.path.join(out, f"{name}.pt"),
            name,
            model,
            num_classes=num_classes,
            in_chans=in_chans,
            image_size=canvas,
            mean=mean.tolist(),
            std=std.tolist(),
            extra={"dataset": dataset, "seed": seed, "epochs": epochs},
        )

    files = {
        "learning_curves": plot_learning_curves(
            histories, os.path.join(out, "learning_curves.png")
        ),
        "attention": plot_attention_grid(
            models["bam_small_cnn"],
            test_x_n[:4],
            os.path.join(out, "attention.png"),
            display=test_x[:4],
        ),
    }
    report = {
        "dataset": dataset,
        "seed": seed,
        "epochs": epochs,
        "train_size": len(train_x),
        "test_size": len(test_x),
        "image_size": canvas,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": results,
        "history": histories,
        "files": {k: os.path.basename(v) for k, v in files.items()},
    }
    table = format_table(results)
    md = (
        f"# torch-bam demo\n\nDataset {dataset}, {len(train_x)} training and {len(test_x)} test "
        f"images of {canvas}x{canvas}, {epochs} epoch(s), seed {seed}, CPU with "
        f"{torch.get_num_threads()} threads. Every number below was measured in this run.\n\n"
        f"{table}\n\nGFLOPs are multiply-accumulates for one image (the paper's convention). "
        f"The pointing game counts test images whose spatial attention peak (of the deepest BAM "
        f"with spatial size > 1, upsampled) lies inside the digit's box; chance is the box area "
        f"over the image area.\n\n![learning curves](learning_curves.png)\n\n"
        f"![attention](attention.png)\n"
    )
    _write_atomic(os.path.join(out, "report.json"), json.dumps(report, indent=2))
    _write_atomic(os.path.join(out, "report.md"), md)
    print(table)
    print(
        f"\nwrote {out}/: report.md, report.json, learning_curves.png, attention.png, "
        + ", ".join(f"{n}.pt" for n in MODELS)
    )
    return report
