"""``torch-bam fit | validate | test``: LightningCLI with a run directory and safe defaults.

Every option comes from ``--config recipe.yaml`` and can be overridden on the command line
(``--trainer.max_epochs 2``, ``--model.lr 0.1``, ``--data.batch_size 64``). ``fit --resume``
continues from the newest intact checkpoint in ``<run_dir>/checkpoints`` (``last.ckpt``).

A run owns its run directory while it runs (:class:`torch_bam._io.RunDirLock`). ``fit`` logs to
``<run_dir>/logs``; ``validate`` and ``test`` log to ``<run_dir>/validate`` and
``<run_dir>/test``, so evaluating a run never replaces its training logs.
"""

from __future__ import annotations

import argparse
import os
import sys

import lightning as L
import yaml
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from .._io import RunDirLock, atomic_write_text, remove_stale_temporaries
from ..errors import UsageError
from .callbacks import MetricsJSON, RNGState, SaveOnSIGTERM
from .checkpoints import (
    AtomicCheckpointIO,
    RunCheckpoint,
    check_weights,
    read_checkpoint,
    resume_checkpoint,
)
from .loggers import RunCSVLogger
from .module import ImageClassifier, NonFiniteLossError
from .progress import EpochLines, hide_tips, wants_lines
from .share import ShareableFolder

__all__ = ["BamCLI", "main"]


def _keyword(ckpt_path) -> bool:
    """Lightning's ckpt_path keywords other than "last" (which --resume's search replaces)."""
    p = str(ckpt_path)
    return p in ("best", "hpc", "registry") or p.startswith("registry:")


class SaveRunConfig(SaveConfigCallback):
    """Save the resolved config as ``<log dir>/config.yaml``, atomically, on rank 0.

    The file is a config that ``validate`` and ``test`` accept as it is (``--config``): the
    run-time flags ``--resume`` and ``--ckpt_path`` are left out.
    """

    def setup(self, trainer, pl_module, stage):
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # on every rank: it is a collective (a broadcast) under DDP
        if trainer.is_global_zero:
            cfg = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))
            cfg.pop("resume", None)
            cfg["ckpt_path"] = None
            path = os.path.join(log_dir, self.config_filename)
            atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
        self.already_saved = True


class BamCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        # Lightning's support for load_from_checkpoint through the CLI uses jsonargparse APIs
        # removed in jsonargparse 5; ImageClassifier saves its own hyperparameters instead.
        kwargs.setdefault("load_from_checkpoint_support", False)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        # Parser errors raise (main turns them into one line) instead of printing the usage of
        # every option, some sixty lines.
        kwargs.setdefault("parser_kwargs", {"prog": "torch-bam", "exit_on_error": False})
        self._checkpoint = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser):
        parser.add_argument("--run_dir", default="runs/default", help="where everything goes")
        parser.add_argument(
            "--keep_last",
            type=int,
            default=3,
            help="epoch checkpoints to keep besides last.ckpt (the latest; -1: all)",
        )
        parser.set_defaults({"data": {"class_path": "torch_bam.data.ClutteredDigitsDataModule"}})
        # The data decides the classes and input channels of a model built by name.
        parser.link_arguments("data", "model.in_chans", compute_fn=_in_chans, apply_on="parse")
        parser.link_arguments(
            "data", "model.num_classes", compute_fn=_num_classes, apply_on="parse"
        )

    def _prepare_subcommand_parser(self, klass, subcommand, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "fit":
            parser.add_argument(
                "--resume",
                action="store_true",
                help="continue from the newest intact checkpoint in <run_dir>/checkpoints "
                "(last.ckpt), with its step, optimiser, schedule, data order and RNG states",
            )
        return parser

    def parse_arguments(self, parser, args):
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub is None:
            return
        cfg = self.config[sub]
        keep = cfg.get("keep_last")
        if isinstance(keep, int) and keep < -1:
            raise UsageError(
                f"--keep_last {keep}: the number of checkpoints to keep besides last.ckpt must "
                "be 0 or more, or -1 to keep every one."
            )
        checkpoints = os.path.join(cfg.run_dir, "checkpoints")
        ckpt = cfg.get("ckpt_path")
        if cfg.get("resume"):
            if ckpt:
                raise UsageError("--resume and --ckpt_path both name a checkpoint: give one.")
            ckpt = cfg.ckpt_path = resume_checkpoint(checkpoints)
        elif ckpt == "last":
            ckpt = cfg.ckpt_path = resume_checkpoint(checkpoints)
        elif not ckpt and sub in ("validate", "test"):
            # Freshly initialised weights, scored into the run's records: refuse.
            raise UsageError(
                f"{sub} needs --ckpt_path: without it the model is untrained (freshly "
                f"initialised weights). Pass --ckpt_path {checkpoints}/last.ckpt, or "
                f"--ckpt_path last for the run's furthest-trained checkpoint."
            )
        if ckpt and not _keyword(ckpt):
            fix = (
                "Pass --ckpt_path a .ckpt written by torch-bam fit (<run_dir>/checkpoints/)."
                if sub != "fit"
                else "Pass another --ckpt_path, or start without it."
            )
            self._checkpoint = read_checkpoint(ckpt, fix)

    def before_instantiate_classes(self):
        cfg = self.config[self.subcommand]
        cfg.trainer.default_root_dir = cfg.run_dir
        if cfg.model.num_classes is None:  # an image folder: ask it (names a missing folder)
            cfg.model.num_classes = _data(cfg.data).num_classes

    def instantiate_classes(self):
        # As LightningCLI's, through jsonargparse's instantiate (instantiate_classes is gone in 5).
        self.config_init = self.parser.instantiate(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self.trainer = self.instantiate_trainer()

    def after_instantiate_classes(self):
        if self._checkpoint is not None:
            path = self.config[self.subcommand].ckpt_path
            check_weights(self.model, self._checkpoint, path)
            self._check_preprocessing(self._checkpoint.get("preprocessing"), path)
            self._checkpoint = None  # the weights are loaded again by Lightning; free these

    def _check_preprocessing(self, recorded, path: str) -> None:
        """The data must prepare images as the checkpoint's training data were prepared."""
        current = getattr(self.datamodule, "preprocessing", None)
        if not isinstance(recorded, dict) or not isinstance(current, dict):
            return
        keys = ("in_chans", "image_size", "resize_size", "interpolation", "mean", "std")
        differ = [k for k in keys if k in recorded and recorded[k] != current.get(k)]
        if not differ:
            return
        was = ", ".join(f"{k} {recorded[k]}" for k in differ)
        now = ", ".join(f"{k} {current.get(k)}" for k in differ)
        message = (
            f"The checkpoint {path!r} was trained on images with {was}; this data gives {now}."
        )
        if self.subcommand != "fit":
            raise UsageError(
                f"{message} Evaluate it on data prepared as in training: pass the run's "
                f"config, --config <run_dir>/logs/config.yaml."
            )
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(f"{message} Training goes on with this data, as asked.")

    def instantiate_trainer(self, **kwargs):
        cfg = self.config[self.subcommand]
        run_dir = cfg.run_dir
        trainer_cfg = self._get(self.config_init, "trainer")
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = self._loggers(run_dir)
        checkpoints = os.path.join(run_dir, "checkpoints")
        ckpt = cfg.get("ckpt_path") if self.subcommand == "fit" else None
        ours = [
            RunCheckpoint(
                # Continuing from one of this directory's own checkpoints (--resume, or
                # --ckpt_path into it): its files are the run's, not another run's.
                resuming=bool(ckpt)
                and os.path.dirname(os.path.abspath(ckpt)) == os.path.abspath(checkpoints),
                dirpath=checkpoints,
                save_last=True,
                save_top_k=cfg.keep_last,
                monitor="step",
                mode="max",
                filename="{epoch}-{step}",
            ),
            SaveOnSIGTERM(),
            RNGState(),
            MetricsJSON(os.path.join(run_dir, "metrics.json")),
            # After MetricsJSON: its model card quotes metrics.json.
            ShareableFolder(os.path.join(run_dir, "model"), run_dir),
        ]
        parser = self._parser(self.subcommand)
        extra = [self._get(self.config_init, c) for c in parser.callback_keys]
        config = {**trainer_cfg, **kwargs}
        given = [*(config.get("callbacks") or []), *extra]
        if (
            config.get("enable_progress_bar") is not False
            and wants_lines()
            and not any(isinstance(c, ProgressBar) for c in given)
        ):
            ours.append(EpochLines())  # a log file, not a terminal: a line per epoch
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return self._instantiate_trainer(config, extra + ours)

    def _loggers(self, run_dir: str):
        if self.subcommand != "fit":  # its own folder: the training logs stay as they are
            return [RunCSVLogger(run_dir, version=self.subcommand)]
        ckpt = self.config.fit.ckpt_path
        resume_step = _resume_step(ckpt) if ckpt else None
        loggers = [RunCSVLogger(run_dir, version="logs", resume_step=resume_step)]
        try:
            import tensorboard  # noqa: F401
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(run_dir, name="", version="tensorboard"))
        except ImportError:
            pass
        return loggers

    def _locked(self, run, **kwargs):
        cfg = self.config[self.subcommand]
        if rank_zero_only.rank != 0:  # DDP: rank 0 holds the directory for all
            return run(**kwargs)
        created = not os.path.isdir(cfg.run_dir)
        try:
            with RunDirLock(cfg.run_dir, what="torch-bam run"):
                if self.subcommand == "fit":  # what a run killed mid-write left behind
                    remove_stale_temporaries(os.path.join(cfg.run_dir, "checkpoints"))
                return run(**kwargs)
        except BaseException:
            # A run that failed before writing anything (missing data, say) leaves no directory.
            if created and not os.listdir(cfg.run_dir):  # the lock removes its file
                os.rmdir(cfg.run_dir)
            raise

    def fit(self, **kwargs):
        check = getattr(self.datamodule, "check_fit", None)  # torch_bam's data modules
        if check is not None:
            check(self.trainer.world_size)
        self._locked(self.trainer.fit, **kwargs)

    def validate(self, **kwargs):
        self._locked(self.trainer.validate, **kwargs)

    def test(self, **kwargs):
        self._locked(self.trainer.test, **kwargs)


def _resume_step(ckpt_path: str) -> int | None:
    if _keyword(ckpt_path):
        return None
    ckpt = read_checkpoint(ckpt_path, "")
    return int(ckpt.get("global_step", 0))


def import_string(path: str):
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _data(data_cfg):
    cls = import_string(data_cfg.class_path)
    init_args = data_cfg.get("init_args")
    return cls(**(vars(init_args) if init_args is not None else {}))


def _class_value(data_cfg, key: str):
    value = getattr(import_string(data_cfg.class_path), key, None)
    return value if isinstance(value, int) else None


def _in_chans(data_cfg) -> int:
    value = _class_value(data_cfg, "in_chans")
    return 3 if value is None else value


def _num_classes(data_cfg) -> int | None:
    # An image folder counts its classes on disk: known once the data is instantiated.
    return _class_value(data_cfg, "num_classes")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    hide_tips()
    try:
        _run(argv)
    except SIGTERMException:
        print("torch-bam: stopped by SIGTERM; last.ckpt saved, continue with --resume.")
        return 143  # 128 + SIGTERM, as a shell reports it
    except NonFiniteLossError as e:
        print(f"torch-bam {argv[0]}: error: {e}", file=sys.stderr)
        return 1
    except UsageError:
        raise  # torch_bam.cli.main prints it
    except argparse.ArgumentError as e:  # the option parser's (exit_on_error=False in BamCLI)
        raise UsageError(f"{e}. See torch-bam {argv[0]} --help for the options.") from e
    except (ValueError, OSError) as e:  # bad model name, missing data, unreadable image, ...
        raise UsageError(str(e)) from e
    return 0


def _run(argv: list[str]) -> None:
    # LightningCLI reads its arguments from sys.argv; handed `args` while sys.argv holds others
    # (main([...]) from Python or a test), it warns that the two may disagree. So it reads argv
    # from sys.argv, put there for the duration of the run.
    saved = sys.argv
    sys.argv = [saved[0] if saved else "torch-bam", *argv]
    try:
        BamCLI(
            ImageClassifier,
            L.LightningDataModule,
            subclass_mode_model=False,
            subclass_mode_data=True,
            args=None,
            auto_configure_optimizers=False,
        )
    finally:
        sys.argv = saved
