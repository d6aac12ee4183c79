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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
