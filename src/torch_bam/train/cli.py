"""``torch-bam fit | validate | test``: LightningCLI with a run directory and safe defaults.

Every option comes from ``--config recipe.yaml`` and can be overridden on the command line
(``--trainer.max_epochs 2``, ``--model.lr 0.1``, ``--data.batch_size 64``). ``--resume``
continues from ``<run_dir>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import os
import sys

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from .callbacks import MetricsJSON, RNGState, SaveOnSIGTERM
from .module import ImageClassifier, NonFiniteLossError

__all__ = ["BamCLI", "main"]


class BamCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_argument("--run_dir", default="runs/default", help="where everything goes")
        parser.add_argument("--keep_last", type=int, default=3, help="checkpoints to keep")
        parser.set_defaults({"data": {"class_path": "torch_bam.data.ClutteredDigitsDataModule"}})

    def before_instantiate_classes(self):
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        cfg.trainer.default_root_dir = cfg.run_dir
        # The data decides the classes and input channels of a model built by name.
        data_cls = import_string(cfg.data.class_path)
        for key in ("num_classes", "in_chans"):
            value = getattr(data_cls, key, None)
            if not isinstance(value, int):  # a property (image folders): ask an instance
                value = getattr(data_cls(**vars(cfg.data.init_args)), key)
            cfg.model[key] = value

    def instantiate_trainer(self, **kwargs):
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = cfg.run_dir
        if self._get(self.config_init, "trainer").get("logger") in (None, True):
            kwargs["logger"] = _loggers(run_dir)
        ours = [
            ModelCheckpoint(
                dirpath=os.path.join(run_dir, "checkpoints"),
                save_last=True,
                save_top_k=cfg.keep_last,
                monitor="step",
                mode="max",
                filename="{epoch}-{step}",
            ),
            SaveOnSIGTERM(),
            RNGState(),
            MetricsJSON(os.path.join(run_dir, "metrics.json")),
        ]
        parser = self._parser(self.subcommand)
        extra = [self._get(self.config_init, c) for c in parser.callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(config, extra + ours)


def import_string(path: str):
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _loggers(run_dir: str):
    loggers = [CSVLogger(run_dir, name="", version="logs")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="", version="tensorboard"))
    except ImportError:
        pass
    return loggers


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--resume" in argv:  # shorthand for Lightning's ckpt_path="last"
        argv.remove("--resume")
        argv += ["--ckpt_path", "last"]
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        _run(argv)
    except SIGTERMException:
        print("torch-bam: stopped by SIGTERM; last.ckpt saved, continue with --resume.")
        return 143  # 128 + SIGTERM, as a shell reports it
    except NonFiniteLossError as e:
        print(f"torch-bam {argv[0]}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # bad model name, missing data, unreadable image, ...
        print(f"torch-bam {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    return 0


def _run(argv: list[str]) -> None:
    BamCLI(
        ImageClassifier,
        L.LightningDataModule,
        subclass_mode_model=False,
        subclass_mode_data=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
