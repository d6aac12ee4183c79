"""The ``torch-bam`` command: one subcommand per job, each a plain function."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from .errors import UsageError


def _example(args: argparse.Namespace) -> int:
    from .example import run

    run(steps=args.steps, seed=args.seed)
    return 0


def _profile(args: argparse.Namespace) -> int:
    from .profile import run

    print(
        run(
            args.model,
            input=args.input,
            vs=args.vs,
            batch=args.batch,
            num_classes=args.num_classes,
            in_chans=args.in_chans,
            runs=args.runs,
            as_json=args.json,
        )
    )
    return 0


def _visualize(args: argparse.Namespace) -> int:
    from .viz.attention import visualize

    for path in visualize(args.checkpoint, args.images, args.out, top_k=args.top_k, echo=print):
        print(path)
    return 0


def _torch_pair() -> None:
    """Import torchvision here, so a torchvision built for another torch ends the command in
    one line naming both versions and the fix, not in a traceback from deep inside Lightning.
    (torchvision not installed at all is left to the commands' own "install the extra".)"""
    import importlib.metadata
    import re

    import torch

    try:
        import torchvision  # noqa: F401
    except ImportError as e:
        if e.name == "torchvision":
            return
        error: Exception = e
    except Exception as e:  # "operator torchvision::nms does not exist", a missing symbol, ...
        error = e
    else:
        return
    try:
        tv = importlib.metadata.version("torchvision")
        wants = [
            r for r in importlib.metadata.requires("torchvision") or [] if re.match(r"torch\b", r)
        ]
    except importlib.metadata.PackageNotFoundError:
        tv, wants = "(unknown version)", []
    asks = re.sub(r"^torch\s*\(?([^;)]*)\)?.*$", r"\1", wants[0]).strip() if wants else ""
    built = f", which asks for torch {asks}," if asks else ""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    raise UsageError(
        f"torchvision {tv}{built} does not work with the installed torch {torch.__version__} "
        f"({type(error).__name__}: {first}). Install a matching pair: pip install "
        f"--force-reinstall torch=={torch.__version__.split('+')[0]} torchvision, from the index "
        f"torch came from (--index-url); pip then picks the torchvision built for that torch."
    )


def _demo(args: argparse.Namespace) -> int:
    _torch_pair()
    from ._io import undo_on_failure
    from .demo import run

    with undo_on_failure():  # a demo that fails (a full disk) leaves none of its new files
        run(**_study_args(args))
    return 0


def _study_args(args: argparse.Namespace) -> dict:
    """The options the demo and compare share, as their ``run`` takes them."""
    return dict(
        epochs=args.epochs,
        seed=args.seed,
        seeds=args.seeds,
        out=args.out,
        dataset=args.dataset,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        canvas=args.canvas,
        batch_size=args.batch_size,
        data_root=args.data_root,
        progress=not args.no_progress,
    )


def _compare(args: argparse.Namespace) -> int:
    _torch_pair()
    from ._io import undo_on_failure
    from .compare import run

    with undo_on_failure():  # a run that fails leaves none of its new files
        run(
            **_study_args(args),
            backbone=args.backbone,
            variants=[v.strip() for v in args.variants.split(",") if v.strip()],
            lr=args.lr,
            accelerator=args.accelerator,
            devices=args.devices,
            strategy=args.strategy,
            precision=args.precision,
            cost_turns=args.cost_turns,
        )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, report

    print(
        report(
            evaluate(
                args.model,
                args.data,
                file=args.file,
                batch_size=args.batch_size,
                workers=args.workers,
                device=args.device,
            )
        )
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import check_output, export, load_source

    check_output(args.to, Path(args.out), args.runs)  # before any loading (or a download)
    source = load_source(args.checkpoint, file=args.file)
    for line in export(source, args.to, args.out, runs=args.runs).lines():
        print(line)
    return 0


def _data_options(p: argparse.ArgumentParser, train_size: int) -> None:
    """The data options the demo and compare share (the engine behind both reads them alike)."""
    p.add_argument(
        "--dataset",
        default="cluttered-digits",
        help="cluttered-digits (offline, default), cifar10, cifar100 or imagefolder:PATH",
    )
    p.add_argument(
        "--train-size", type=int, default=train_size, help=f"training images (default {train_size})"
    )
    p.add_argument("--val-size", type=int, default=500, help="validation images (default 500)")
    p.add_argument("--test-size", type=int, default=1000, help="test images (default 1000)")
    p.add_argument("--canvas", type=int, default=32, help="image side in pixels (default 32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torch-bam", description="BAM, the Bottleneck Attention Module, for PyTorch."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("example", help="train a small BAM CNN on synthetic images (about 10 s)")
    p.add_argument("--steps", type=int, default=150, help="training steps (default 150)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_example)

    p = sub.add_parser(
        "demo", help="train a small CNN with and without BAM on offline data, report and plot"
    )
    p.add_argument("--epochs", type=int, default=4, help="epochs per run (default 4)")
    p.add_argument("--seed", type=int, default=0, help="first seed and data seed (default 0)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per model (default 3)")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    _data_options(p, train_size=2560)
    p.add_argument("--data-root", default="data", help="where CIFAR lives (default data)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "compare", help="train a backbone with BAM, its ablations, SE, CBAM, ECA; report honestly"
    )
    p.add_argument("--backbone", default="small_cnn", help="a registered model (small_cnn)")
    p.add_argument(
        "--variants",
        default="none,bam,se,cbam,eca,bam-channel,bam-spatial",
        help="comma-separated, the first is the reference (default none,bam,se,cbam,eca,"
        "bam-channel,bam-spatial; also bam-max, bam-product, se-bottleneck, cbam-bottleneck, "
        "eca-bottleneck)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed and data seed (default 0)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    _data_options(p, train_size=1536)
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    p.add_argument("--data-root", default="data", help="where CIFAR lives (default data)")
    p.add_argument("--out", default="runs/compare", help="run directory (default runs/compare)")
    p.add_argument("--accelerator", default="cpu", help="Lightning's: cpu (default), gpu, auto")
    p.add_argument("--devices", default="1", help="Lightning's devices: a count or auto (1)")
    p.add_argument("--strategy", default="auto", help="Lightning's strategy, e.g. ddp (auto)")
    p.add_argument("--precision", default=None, help="Lightning's, e.g. bf16-mixed (32-true)")
    p.add_argument(
        "--cost-turns", type=int, default=10, help="interleaved turns timing each (default 10)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_compare)

    p = sub.add_parser("visualize", help="draw BAM attention maps of a checkpoint over images")
    p.add_argument("checkpoint", help="a Lightning .ckpt or a torch-bam checkpoint (.pt)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output directory for the PNGs")
    p.add_argument("--top-k", type=int, default=8, help="channels shown per BAM (default 8)")
    p.set_defaults(func=_visualize)

    p = sub.add_parser("profile", help="parameters, GFLOPs, activation memory, latency")
    p.add_argument("model", help="a registered model name (torch_bam.list_models())")
    p.add_argument("--input", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--vs", default=None, help="a second model to set side by side")
    p.add_argument("--batch", type=int, default=1, help="batch for latency (default 1)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    p.add_argument("--in-chans", type=int, default=3, help="input channels (default 3)")
    p.add_argument(
        "--runs",
        type=int,
        default=10,
        help="timed turns after warm-up; each runs every model once (default 10)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_profile)
    p = sub.add_parser("eval", help="top-1/top-5 of pretrained weights on an ImageNet folder")
    p.add_argument("model", help="weights by name, e.g. bam_resnet50.ptcv_in1k")
    p.add_argument("--data", required=True, help="imagefolder:PATH (one folder per class)")
    p.add_argument("--file", default=None, help="a weight file you have (else the cache)")
    p.add_argument("--batch-size", type=int, default=50, help="batch size (default 50)")
    p.add_argument("--workers", type=int, default=2, help="data loading workers (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=_eval)
    p = sub.add_parser(
        "export", help="a trained network as a shareable folder, ONNX or TorchScript, checked"
    )
    p.add_argument(
        "checkpoint",
        help="a .ckpt of torch-bam fit, a run directory, a demo checkpoint (.pt), a model "
        "folder, or a published tag (bam_resnet50.ptcv_in1k)",
    )
    # Checked by the export itself (one line), not by argparse's usage message.
    p.add_argument("--to", required=True, help="folder, onnx or torchscript")
    p.add_argument("--out", required=True, help="the folder or file to write")
    p.add_argument("--file", default=None, help="a published tag's weight file you have")
    p.add_argument("--runs", type=int, default=10, help="timed calls of each (0: no timing)")
    p.set_defaults(func=_export)
    whats = ("train", "evaluate on the validation set", "test")
    for name, what in zip(_LIGHTNING, whats, strict=True):
        sub.add_parser(
            name,
            help=f"{what} with Lightning: --config recipe.yaml, overrides like --model.lr 0.1 "
            f"(see torch-bam {name} --help; needs the train extra)",
        )
    return parser


_LIGHTNING = ("fit", "validate", "test")


def _lightning(argv: list[str]) -> int:
    _torch_pair()
    try:
        from .train.cli import main as train_main
    except ImportError as e:
        print(
            f"torch-bam {argv[0]}: needs the train extra ({e}). Install it with "
            "pip install 'torch-bam[train]'.",
            file=sys.stderr,
        )
        return 2
    from ._upstream_warnings import lightning_calls

    with lightning_calls():
        return train_main(argv)


def _run(argv: list[str]) -> int:
    if argv and argv[0] in _LIGHTNING:  # LightningCLI parses these itself
        return _lightning(argv)
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Bad input (:class:`torch_bam.errors.UsageError`, raised anywhere
    below) ends here: one line on stderr naming the cause and the fix, exit status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _run(argv)
    except UsageError as e:
        command = argv[0] if argv else ""
        message = " ".join(str(e).split())  # one line, whatever the message's layout
        print(f"torch-bam {command}: error: {message}".replace("  ", " "), file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `torch-bam profile ... | head`: the reader left; stop without a traceback. Point
        # stdout at devnull so the interpreter's final flush does not raise again (the recipe
        # of Python's signal docs, which also exit with status 1 here).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        command = argv[0] if argv else ""
        where = f" writing {e.filename}" if e.filename else ""
        print(
            f"torch-bam {command}: error: {e.strerror or os.strerror(e.errno)}{where}. "
            f"{'The new files of this run were removed. ' if command == 'demo' else ''}"
            f"Free some space, or write elsewhere (--out).",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
