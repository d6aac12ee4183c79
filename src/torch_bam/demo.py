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

import torch
from torch import Tensor, nn

MODELS = ("small_cnn", "bam_small_cnn")


def _datasets(dataset: str, train_size: int, test_size: int, canvas: int, seed: int, root):
    """``(train_set, test_x, test_y, test_boxes or None, num_classes, in_chans)``.

    The data come from :mod:`torch_bam.data`; the test split is held as tensors, so error and
    pointing game are computed over exactly the same images.
    """
    from torch.utils.data import DataLoader, Subset

    from .data import ClutteredDigits

    if dataset == "cluttered-digits":
        scale = max(1, min(3, canvas // 16))  # the digit covers about half the canvas side
        kw = dict(canvas_size=canvas, scale=scale, seed=seed)
        train = ClutteredDigits("train", train_size, **kw)
        test = ClutteredDigits("test", test_size, **kw)
        return train, test.images, test.labels, test.boxes, 10, 1
    from .data import CIFAR10DataModule, CIFAR100DataModule, ImageFolderDataModule

    if dataset in ("cifar10", "cifar100"):
        cls = CIFAR10DataModule if dataset == "cifar10" else CIFAR100DataModule
        dm = cls(root=root, batch_size=256, num_workers=0)
        num_classes = 10 if dataset == "cifar10" else 100
    elif dataset.startswith("imagefolder:"):
        dm = ImageFolderDataModule(
            root=dataset.split(":", 1)[1],
            batch_size=256,
            num_workers=0,
            image_size=canvas,
            resize_size=canvas,
        )
        num_classes = None
    else:
        raise SystemExit(
            f"demo: unknown --dataset {dataset!r}; use cluttered-digits, cifar10, cifar100 or "
            f"imagefolder:PATH."
        )
    try:
        dm.setup("fit")
    except FileNotFoundError as e:
        # The data module's message names `torch-bam fit`'s flags; say the demo's instead.
        msg = str(e).replace("--data.root", "--data-root")
        msg = msg.replace("pass --data.download true", "download it (torchvision, download=True)")
        raise SystemExit(f"demo: {msg}") from None
    if num_classes is None:
        num_classes = len(dm.train_set.classes)
    gen = torch.Generator().manual_seed(seed)
    train = Subset(dm.train_set, torch.randperm(len(dm.train_set), generator=gen)[:train_size])
    test = Subset(dm.val_set, torch.randperm(len(dm.val_set), generator=gen)[:test_size])
    xs, ys = zip(*DataLoader(test, batch_size=256), strict=True)
    test_x, test_y = torch.cat(xs), torch.cat(ys)
    return train, test_x, test_y, None, num_classes, test_x.shape[1]


def _history_callback():
    """A Lightning callback that keeps per-epoch mean training loss and validation error."""
    import lightning as L

    class History(L.Callback):
        def __init__(self):
            self.history: dict[str, list[float]] = {"train_loss": [], "val_top1_error": []}
            self._losses: list[float] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self._losses.append(float(loss))

        def on_train_epoch_end(self, trainer, module):
            # Runs after the epoch's validation loop, so its error is in callback_metrics.
            self.history["train_loss"].append(sum(self._losses) / max(len(self._losses), 1))
            self._losses = []
            err = trainer.callback_metrics.get("val/top1_err")
            if err is not None:
                self.history["val_top1_error"].append(float(err))

    return History()


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
    epochs: int = 8,
    seed: int = 0,
    out: str = "runs/demo",
    dataset: str = "cluttered-digits",
    train_size: int = 4000,
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

    from .profile import count_macs
    from .viz.attention import plot_attention_grid
    from .viz.checkpoint import save_checkpoint
    from .viz.curves import plot_learning_curves

    if epochs < 1 or train_size < 2 or test_size < 1:
        raise SystemExit("demo: need --epochs >= 1, --train-size >= 2 and --test-size >= 1.")
    from .train import ImageClassifier

    os.makedirs(out, exist_ok=True)
    L.seed_everything(seed, verbose=False)
    train_set, test_x, test_y, boxes, num_classes, in_chans = _datasets(
        dataset, train_size, test_size, canvas, seed, data_root
    )
    image_size = test_x.shape[-1]

    results: dict[str, dict] = {}
    histories: dict[str, dict[str, list[float]]] = {}
    models: dict[str, nn.Module] = {}
    for name in MODELS:
        L.seed_everything(seed, verbose=False)  # same init draw order and same batches
        module = ImageClassifier(
            name,
            num_classes=num_classes,
            in_chans=in_chans,
            lr=lr,
            weight_decay=5e-4,
            schedule="cosine",
            warmup_epochs=min(0.5, epochs / 4),
            max_epochs=epochs,
        )
        model = module.model
        history = _history_callback()
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True)
        val_loader = DataLoader(TensorDataset(test_x, test_y), batch_size=256)
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            num_sanity_val_steps=0,
            callbacks=[history],
        )
        if progress:
            print(f"training {name}")
        t0 = time.perf_counter()
        trainer.fit(module, train_loader, val_loader)
        train_seconds = time.perf_counter() - t0
        model.eval()
        macs, _ = count_macs(model, test_x[:1])
        r = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "gflops": macs / 1e9,
            "train_seconds": train_seconds,
        }
        r.update(_test_error_and_pointing(model, test_x, test_y, boxes, 256))
        if "pointing_hit_rate" not in r:
            r["pointing_hit_rate"] = None
        results[name] = r
        histories[name] = history.history
        models[name] = model
        save_checkpoint(
            os.path.join(out, f"{name}.pt"),
            name,
            model,
            num_classes=num_classes,
            in_chans=in_chans,
            image_size=image_size,
            mean=[0.0] * in_chans,  # the demo feeds images as they come from torch_bam.data
            std=[1.0] * in_chans,
            extra={"dataset": dataset, "seed": seed, "epochs": epochs},
        )

    files = {
        "learning_curves": plot_learning_curves(
            histories, os.path.join(out, "learning_curves.png")
        ),
        "attention": plot_attention_grid(
            models["bam_small_cnn"],
            test_x[:4],
            os.path.join(out, "attention.png"),
        ),
    }
    report = {
        "dataset": dataset,
        "seed": seed,
        "epochs": epochs,
        "train_size": len(train_set),
        "test_size": len(test_x),
        "image_size": image_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": results,
        "history": histories,
        "files": {k: os.path.basename(v) for k, v in files.items()},
    }
    table = format_table(results)
    md = (
        f"# torch-bam demo\n\nDataset {dataset}, {len(train_set)} training and {len(test_x)} test "
        f"images of {image_size}x{image_size}, {epochs} epoch(s), seed {seed}, CPU with "
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
