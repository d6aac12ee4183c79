"""The ``torch-bam`` command: one subcommand per job, each a plain function."""

from __future__ import annotations

import argparse
import sys


def _example(args: argparse.Namespace) -> int:
    from .example import run

    run(steps=args.steps, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torch-bam", description="BAM, the Bottleneck Attention Module, for PyTorch."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("example", help="train a small BAM CNN on synthetic images (about 10 s)")
    p.add_argument("--steps", type=int, default=150, help="training steps (default 150)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_example)
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
    try:
        from .train.cli import main as train_main
    except ImportError as e:
        print(
            f"torch-bam {argv[0]}: needs the train extra ({e}). Install it with "
            "pip install 'torch-bam[train]'.",
            file=sys.stderr,
        )
        return 2
    return train_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _LIGHTNING:  # LightningCLI parses these itself
        return _lightning(argv)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
