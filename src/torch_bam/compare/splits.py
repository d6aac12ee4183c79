"""Train, validation and test data of a comparison (and of the demo), kept apart.

Training uses the train split; curves and the choice of epoch use the validation split; the test
split is built (or read) only when :meth:`Splits.test` is called, and that can happen once: the
engine calls it after every model is trained and chosen.

For cluttered digits the three splits are drawn from disjoint sets of source digits with their
own clutter (see :class:`torch_bam.data.ClutteredDigits`). For CIFAR and image folders, the
validation and test images are two disjoint random halves of the dataset's held-out split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UsageError

# Cluttered digits: an 8x8 digit (scaled by DIGIT_SCALE) at a random place on the canvas, among
# fragments of other digits and an ink blot brighter than the digit, so that neither the canvas
# centre nor the brightest patch tells where the digit is (tests/compare/test_splits.py measures
# it).
DIGIT_SCALE = 1
NUM_FRAGMENTS = 8
FRAGMENT_SIZE = 4
NUM_BLOTS = 1
MIN_CANVAS = 16


@dataclass
class Splits:
    train: Dataset
    val_x: Tensor
    val_y: Tensor
    num_classes: int
    in_chans: int
    image_size: int
    box_side: int | None  # the digit's side in pixels; None where images have no boxes
    _load_test: Callable[[], tuple[Tensor, Tensor, Tensor | None]] = field(repr=False)
    _tested: bool = field(default=False, repr=False)

    def test(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(images, labels, boxes or None)`` of the test split; callable once."""
        if self._tested:
            raise RuntimeError("the test split is used once, at the end; it was used.")
        self._tested = True
        return self._load_test()


def _cluttered(train_size: int, val_size: int, test_size: int, canvas: int, seed: int) -> Splits:
    from ..data import ClutteredDigits

    if canvas < MIN_CANVAS:
        raise UsageError(
            f"--canvas {canvas} is too small for cluttered digits: the 8-pixel digit needs room "
            f"to move among the clutter. Pass --canvas {MIN_CANVAS} or more (default 32)."
        )
    kw = dict(
        canvas_size=canvas,
        scale=DIGIT_SCALE,
        num_fragments=NUM_FRAGMENTS,
        fragment_size=FRAGMENT_SIZE,
        num_blots=NUM_BLOTS,
        seed=seed,
    )
    train = ClutteredDigits("train", train_size, **kw)
    val = ClutteredDigits("val", val_size, **kw)

    def load_test():
        test = ClutteredDigits("test", test_size, **kw)
        return test.images, test.labels, test.boxes

    return Splits(train, val.images, val.labels, 10, 1, canvas, 8 * DIGIT_SCALE, load_test)


def _stack(dataset) -> tuple[Tensor, Tensor]:
    from torch.utils.data import DataLoader

    xs, ys = zip(*DataLoader(dataset, batch_size=256), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _torchvision(
    dataset: str, train_size: int, val_size: int, test_size: int, canvas: int, seed: int, root
) -> Splits:
    from torch.utils.data import Subset

    from ..data import CIFAR10DataModule, CIFAR100DataModule, ImageFolderDataModule

    if dataset in ("cifar10", "cifar100"):
        cls = CIFAR10DataModule if dataset == "cifar10" else CIFAR100DataModule
        dm = cls(root=root, batch_size=256, num_workers=0)
        flag = "--data-root"
    else:
        if canvas < MIN_CANVAS:
            raise UsageError(f"--canvas {canvas} is too small; pass --canvas {MIN_CANVAS} or more.")
        dm = ImageFolderDataModule(
            root=dataset.split(":", 1)[1],
            batch_size=256,
            num_workers=0,
            image_size=canvas,
            resize_size=canvas,
        )
        flag = "--dataset imagefolder:PATH"
    try:
        dm.setup("fit")
    except FileNotFoundError as e:
        # The data module's message names `torch-bam fit`'s flags; name the command's instead.
        msg = str(e).replace("Or set --data.root to where it is.", f"Or pass {flag} with it.")
        msg = msg.replace("--data.root", flag)
        msg = msg.replace("pass --data.download true", "download it (torchvision, download=True)")
        raise UsageError(msg) from None
    held = len(dm.val_set)
    if val_size + test_size > held:
        raise UsageError(
            f"--val-size {val_size} + --test-size {test_size} exceed the {held} held-out images "
            f"of {dataset}; pass smaller sizes."
        )
    if train_size > len(dm.train_set):
        raise UsageError(
            f"--train-size {train_size} exceeds the {len(dm.train_set)} training images of "
            f"{dataset}; pass a smaller --train-size."
        )
    gen = torch.Generator().manual_seed(seed)
    train = Subset(dm.train_set, torch.randperm(len(dm.train_set), generator=gen)[:train_size])
    order = torch.randperm(held, generator=gen)
    val_x, val_y = _stack(Subset(dm.val_set, order[:val_size]))
    test_index = order[val_size : val_size + test_size]

    def load_test():
        x, y = _stack(Subset(dm.val_set, test_index))
        return x, y, None

    num_classes = len(dm.train_set.classes)
    return Splits(
        train, val_x, val_y, num_classes, val_x.shape[1], val_x.shape[-1], None, load_test
    )


def make_splits(
    dataset: str,
    train_size: int,
    val_size: int,
    test_size: int,
    canvas: int,
    seed: int,
    root: str,
) -> Splits:
    """The three splits; the data do not depend on the training seeds."""
    if dataset == "cluttered-digits":
        return _cluttered(train_size, val_size, test_size, canvas, seed)
    return _torchvision(dataset, train_size, val_size, test_size, canvas, seed, root)
