"""Lightning data modules: cluttered digits (the default, offline), CIFAR-10/100, image folders."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UsageError
from .cluttered_digits import ClutteredDigits
from .images import load_rgb  # 16-bit and float pixels scaled, not clipped
from .resumable_sampler import ResumableRandomSampler
from .seeded import SeededSamples

__all__ = [
    "CIFAR10DataModule",
    "preprocessing_for",
    "CIFAR100DataModule",
    "ClutteredDigitsDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _Base(L.LightningDataModule):
    """``batch_size`` (per process) and ``num_workers`` left as ``None`` take this data's own
    defaults below: a config that switches data (``--data=...``) carries over only what the
    user set, not another data module's defaults."""

    #: which images ``test`` evaluates: the data's own test split, or the validation one
    test_split = "test"
    default_batch_size = 64
    default_num_workers = 0

    def __init__(self, batch_size: int | None, num_workers: int | None):
        super().__init__()
        self.batch_size = self.default_batch_size if batch_size is None else batch_size
        if num_workers is None:
            num_workers = self.default_num_workers
        # More loader processes than cores only compete for them.
        self.num_workers = min(num_workers, available_cores())
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        cls, sampler = DataLoader, None
        # Its own generator, so that creating an iterator (the workers' base seed) draws nothing
        # from the global RNG: that stream is left to the model (dropout, noise in a step).
        generator = torch.Generator()  # evaluation draws nothing random: any fixed seed
        if train:
            cls = _ResumableLoader
            seed = self._run_seed()
            sampler = self._train_sampler(len(ds), seed)
            # Augmentation draws follow from (seed, epoch, index): the same in a resumed run,
            # whatever was prefetched before the checkpoint or which worker loads a sample.
            ds = SeededSamples(ds, seed)
            generator.manual_seed(seed)
        loader = cls(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=generator,
        )
        loader.datamodule = self
        return loader

    def check_fit(self, world_size: int = 1) -> None:
        """Refuse a training split with no full batch per process: training drops the last
        incomplete batch (BatchNorm needs more than one image), so it would train nothing and
        write no checkpoint. ``torch-bam fit`` calls this before the run starts."""
        self.setup("fit")
        n = len(self.train_set)
        per = n // world_size  # each process takes an equal share (the sampler drops the rest)
        if per < self.batch_size:
            share = f" ({per} per process, {world_size} processes)" if world_size > 1 else ""
            raise UsageError(
                f"the training split has {n} images{share}, fewer than --data.batch_size "
                f"{self.batch_size}: no full batch, so nothing would be trained. Pass a smaller "
                f"--data.batch_size, or train on more images."
            )

    def _run_seed(self) -> int:
        seed = torch.initial_seed() % 2**31
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # Every rank must shuffle alike for their shards to be disjoint, seeded run or not.
            seed = trainer.strategy.broadcast(seed, src=0)
        return seed

    def _train_sampler(self, n: int, seed: int) -> ResumableRandomSampler:
        trainer = self.trainer  # outside a Trainer (None) the sampler asks torch.distributed
        return ResumableRandomSampler(
            n,
            seed=seed,
            num_replicas=trainer.world_size if trainer is not None else None,
            rank=trainer.global_rank if trainer is not None else None,
            with_epoch=True,
        )

    @property
    def preprocessing(self) -> dict:
        """What a model trained on this data expects of an image, as checkpoints record it:
        the shorter side resized to ``resize_size`` (``interpolation``), centre-cropped to
        ``image_size``, scaled to [0, 1], then ``(x - mean) / std`` per channel."""
        (mean, std), size, resize = self._normalization(), self._image_size(), self._resize()
        return {
            "dataset": self._dataset_name(),
            "in_chans": len(mean),
            "image_size": size,
            "resize_size": resize,
            "interpolation": "bilinear",
            "mean": [float(m) for m in mean],
            "std": [float(v) for v in std],
        }

    def _resize(self) -> int:
        return self._image_size()  # data that is the model's size: nothing resized in training

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False)

    def test_dataloader(self):
        return self._loader(self.test_set, False)


class _ResumableLoader(DataLoader):
    """A DataLoader that Lightning saves in checkpoints: the epoch and the batches already seen.

    Lightning stores ``state_dict()`` with the loops and calls ``load_state_dict`` on resume, so
    a run stopped mid-epoch goes on with the very next batch of the same shuffled order, on one
    process or on every DDP rank (the state is the same for all ranks).
    """

    def state_dict(self) -> dict:
        trainer = self.datamodule.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return {"epoch": trainer.current_epoch, "batches": done, "seed": self.sampler.seed}

    def load_state_dict(self, state: dict) -> None:
        if "seed" in state:
            # The stopped run's seed, whatever this process was seeded with. (RNGState restores
            # the initial seed too, but only helps if the loader is built after it.)
            self.sampler.seed = self.dataset.seed = state["seed"]
        # Under DDP each rank skips the batches it had itself taken from its own shard.
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip(state["batches"] * self.batch_size)


class ClutteredDigitsDataModule(_Base):
    """Cluttered digits (see ``ClutteredDigits``): 10 classes, 1 channel, no download; batches
    of 64, no worker processes by default.

    Training, validation (``num_val``) and test (``num_test``) images come from the dataset's
    three splits, which share no source digit and no clutter stream (see ``ClutteredDigits``).
    """

    num_classes = 10
    in_chans = 1

    def __init__(
        self,
        batch_size: int | None = None,
        num_workers: int | None = None,
        num_train: int = 6000,
        num_val: int = 1000,
        num_test: int = 1000,
        canvas_size: int = 64,
        scale: int = 3,
        num_fragments: int = 6,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers)
        self.kwargs = dict(
            canvas_size=canvas_size, scale=scale, num_fragments=num_fragments, seed=seed
        )
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test

    def _dataset_name(self) -> str:
        return "cluttered-digits"

    def _image_size(self) -> int:
        return self.kwargs["canvas_size"]

    def _normalization(self):
        return (0.0,), (1.0,)  # the model sees the digits' [0, 1] pixels as they are

    def setup(self, stage: str | None = None):
        if self.train_set is None:
            self.train_set = ClutteredDigits("train", self.num_train, **self.kwargs)
            self.val_set = ClutteredDigits("val", self.num_val, **self.kwargs)
            self.test_set = ClutteredDigits("test", self.num_test, **self.kwargs)


def _missing(name: str, root: Path, how: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name}: no data under {str(root)!r}. {how} Or set --data.root to where it is."
    )


class _CIFAR(_Base):
    """CIFAR has a training and a test split, no validation split: ``validate`` and ``test``
    both evaluate the 10,000 test images, as the papers report them. Batches of 128 and 4
    worker processes by default."""

    num_classes = 10
    in_chans = 3
    default_batch_size = 128
    default_num_workers = 4
    _mean_std = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

    def __init__(
        self,
        root: str = "data",
        batch_size: int | None = None,
        num_workers: int | None = None,
        download: bool = False,
    ):
        super().__init__(batch_size, num_workers)
        self.root, self.download = Path(root), download

    def _dataset_cls(self):
        raise NotImplementedError

    def _dataset_name(self) -> str:
        return self._dataset_cls().__name__.lower()

    def _image_size(self) -> int:
        return 32

    def _normalization(self):
        return self._mean_std

    def prepare_data(self):
        cls = self._dataset_cls()
        for train in (True, False):
            try:
                cls(self.root, train=train, download=self.download)
            except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
                raise _missing(
                    cls.__name__,
                    self.root,
                    f"Put the extracted python version ({cls.base_folder}/) there, or pass "
                    f"--data.download true on a machine with internet ({e}).",
                ) from e
            except OSError as e:  # the download itself failed (offline)
                raise _missing(
                    cls.__name__,
                    self.root,
                    f"The download failed ({e}); copy {cls.filename} extracted there by hand.",
                ) from e

    def setup(self, stage: str | None = None):
        import torchvision.transforms as T

        if self.train_set is not None:
            return
        self.prepare_data()  # also on every DDP rank: only checks, never downloads twice
        norm = T.Normalize(*self._mean_std)
        train_tf = T.Compose(
            [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm]
        )
        cls = self._dataset_cls()
        self.train_set = cls(self.root, train=True, transform=train_tf)
        self.val_set = cls(self.root, train=False, transform=T.Compose([T.ToTensor(), norm]))
        self.test_set = self.val_set


class CIFAR10DataModule(_CIFAR):
    """CIFAR-10 via torchvision; random crop 32 (padding 4) and horizontal flip."""

    def _dataset_cls(self):
        from torchvision.datasets import CIFAR10

        return CIFAR10


class CIFAR100DataModule(_CIFAR):
    """CIFAR-100 via torchvision; random crop 32 (padding 4) and horizontal flip."""

    num_classes = 100
    _mean_std = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

    def _dataset_cls(self):
        from torchvision.datasets import CIFAR100

        return CIFAR100


class ImageFolderDataModule(_Base):
    """``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg`` and, if there is one,
    ``root/test/<class>/*.jpg``.

    Every split takes the training split's class index (a class missing from ``val/`` keeps its
    label elsewhere, with a warning; a class only in ``val/`` or ``test/`` is an error).
    ``test`` evaluates ``test/``, or ``val/`` when there is no ``test/`` (ImageNet has none with
    labels); ``test_split`` says which. Train: RandomResizedCrop(224) and horizontal flip;
    evaluation: resize 256, centre crop 224. Batches of 256 and 8 worker processes by default.
    """

    in_chans = 3
    default_batch_size = 256
    default_num_workers = 8

    def __init__(
        self,
        root: str = "data/imagenet",
        batch_size: int | None = None,
        num_workers: int | None = None,
        image_size: int = 224,
        resize_size: int = 256,
    ):
        super().__init__(batch_size, num_workers)
        self.root = Path(root)
        self.image_size, self.resize_size = image_size, resize_size
        self.test_split = "test" if (self.root / "test").is_dir() else "val"

    _mean_std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # ImageNet's

    def _dataset_name(self) -> str:
        return f"imagefolder:{self.root}"

    def _image_size(self) -> int:
        return self.image_size

    def _resize(self) -> int:
        return self.resize_size

    def _normalization(self):
        return self._mean_std

    def _check(self):
        for split in ("train", "val"):
            d = self.root / split
            if not d.is_dir():
                raise _missing(
                    type(self).__name__,
                    d,
                    f"Expected {self.root}/train/<class>/*.jpg and {self.root}/val/<class>/*.jpg.",
                )

    def _classes(self) -> list[str]:
        self._check()
        classes = sorted(p.name for p in os.scandir(self.root / "train") if p.is_dir())
        if not classes:
            raise UsageError(
                f"{type(self).__name__}: no class folders under {str(self.root / 'train')!r}. "
                f"Put each class's images in {self.root}/train/<class>/ (and val/<class>/), "
                "or set --data.root to where they are."
            )
        return classes

    @property
    def num_classes(self) -> int:
        return len(self._classes())

    def prepare_data(self):
        self._classes()

    def _split(self, split: str, classes: list[str], transform):
        d = self.root / split
        present = sorted(p.name for p in os.scandir(d) if p.is_dir())
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise UsageError(
                f"{type(self).__name__}: class folder(s) {', '.join(map(repr, unknown))} in "
                f"{str(d)!r} are not in {str(self.root / 'train')!r}, so the model has no label "
                "for them. Remove them, or add their training images."
            )
        missing = sorted(set(classes) - set(present))
        if missing:
            warnings.warn(
                f"{type(self).__name__}: {split}/ has no images of class "
                f"{', '.join(map(repr, missing))}; its other classes keep the labels of train/.",
                UserWarning,
                stacklevel=3,
            )
        return _split_folder(d, classes, transform)

    def setup(self, stage: str | None = None):
        import torchvision.transforms as T

        if self.train_set is not None:
            return
        classes = self._classes()
        norm = T.Normalize(*self._mean_std)
        train_tf = T.Compose(
            [T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm]
        )
        eval_tf = T.Compose(
            [T.Resize(self.resize_size), T.CenterCrop(self.image_size), T.ToTensor(), norm]
        )
        self.train_set = self._split("train", classes, train_tf)
        self.val_set = self._split("val", classes, eval_tf)
        if self.test_split == "test":
            self.test_set = self._split("test", classes, eval_tf)
        else:
            self.test_set = self.val_set


def _split_folder(root: Path, classes: list[str], transform):
    """An ``ImageFolder`` of ``root`` labelled with the given (the training split's) classes."""
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(root, transform, loader=load_rgb, allow_empty=True)
    index = {c: i for i, c in enumerate(classes)}
    ds.samples = ds.imgs = [(path, index[ds.classes[y]]) for path, y in ds.samples]
    ds.targets = [y for _, y in ds.samples]
    ds.classes, ds.class_to_idx = list(classes), index
    return ds


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1K as an image folder (``train/`` and ``val/`` with 1000 class folders each)."""


def preprocessing_for(dataset: str, image_size: int) -> dict:
    """The :attr:`preprocessing` of data named as ``torch-bam demo --dataset`` names it
    (``cluttered-digits``, ``cifar10``, ``cifar100``, ``imagefolder:PATH``), at ``image_size``
    (the canvas; CIFAR's is 32). Reads no data."""
    if dataset == "cluttered-digits":
        return ClutteredDigitsDataModule(canvas_size=image_size).preprocessing
    if dataset in ("cifar10", "cifar100"):
        cls = CIFAR10DataModule if dataset == "cifar10" else CIFAR100DataModule
        return cls().preprocessing
    if dataset.startswith("imagefolder:"):
        root = dataset.split(":", 1)[1]
        return ImageFolderDataModule(
            root, image_size=image_size, resize_size=image_size
        ).preprocessing
    raise ValueError(f"preprocessing_for: unknown dataset {dataset!r}.")
