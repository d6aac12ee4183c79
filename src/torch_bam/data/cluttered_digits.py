"""Cluttered digits: scikit-learn's bundled 8x8 digits on a larger canvas, among clutter.

The cluttered-MNIST idea from attention research, with no download: each digit is upscaled,
placed at a random position, and fragments of other digits are scattered around it. Every image
keeps its digit's box ``(x0, y0, x1, y1)`` (pixels, ``x1``/``y1`` exclusive) so an attention map
can be checked against where the digit is (the "pointing game").
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

__all__ = ["ClutteredDigits"]

# The 1797 source digits are split once, the same way for every seed: within each class, a
# fixed random permutation gives HELD_FRACTION of the class to validation, as many others to
# test, and the rest to train. No source digit is shared between two splits, and the three
# splits have the same mix of classes and of writers (scikit-learn's digits are stored in
# writer order, so a split by position gives the last writers to one split alone).
HELD_FRACTION = 1 / 6
SPLIT_SEED = 0
SPLITS = ("train", "val", "test")


def _source_indices(split: str, labels: torch.Tensor) -> torch.Tensor:
    """Sorted indices of the source digits of ``split``, stratified by class."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in SPLITS}
    for c in range(int(labels.max()) + 1):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(len(idx) * HELD_FRACTION)
        parts["val"].append(idx[:k])
        parts["test"].append(idx[k : 2 * k])
        parts["train"].append(idx[2 * k :])
    return torch.cat(parts[split]).sort().values


def _load_digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.as_tensor(d.images, dtype=torch.float32) / 16.0  # [N, 8, 8] in [0, 1]
    return images, torch.as_tensor(d.target, dtype=torch.long)


def _blot(canvas: torch.Tensor, box: tuple[int, int, int, int], side: int, g) -> None:
    """Paint a filled square somewhere it does not touch ``box`` (gives up after 20 tries)."""
    size = canvas.shape[-1]
    b = int(torch.randint(max(1, 3 * side // 4), side + 1, (1,), generator=g))
    value = 0.6 + 0.4 * float(torch.rand((), generator=g))
    for _ in range(20):
        y, x = torch.randint(size - b + 1, (2,), generator=g).tolist()
        x0, y0, x1, y1 = box
        if x + b <= x0 or x >= x1 or y + b <= y0 or y >= y1:
            patch = canvas[y : y + b, x : x + b]
            patch.copy_(torch.clamp(patch, min=value))
            return


class ClutteredDigits(Dataset):
    """Deterministic cluttered digits: ``dataset[i] -> (image [1, S, S], label)``.

    Args:
        split: ``"train"`` (1199 source digits), ``"val"`` (299 others) or ``"test"`` (299
            others again), chosen at random within each class: the three splits share no
            source digit and no clutter stream, and come from one distribution.
        num_samples: images to generate (sources are reused with new positions and clutter).
        canvas_size: side ``S`` of the square canvas.
        scale: integer upscaling of each 8x8 digit (digit side ``8 * scale``).
        num_fragments: clutter pieces per image, each a random crop of another digit.
        fragment_size: side of a fragment, in source (8x8) pixels, before upscaling.
        num_blots: ink blots per image: filled squares of 3/4 to 1 digit side, of intensity 0.6
            to 1, placed off the digit. They hold more ink than the digit, so the brightest
            patch of the image is rarely the digit.
        seed: everything (positions, clutter, which digit) follows from it.
        return_box: if true, items are dicts ``{"image", "label", "box"}``.

    ``dataset.images`` ``[N, 1, S, S]``, ``dataset.labels`` ``[N]`` and ``dataset.boxes``
    ``[N, 4]`` (``x0, y0, x1, y1``) hold everything; ``dataset.sources`` ``[N]`` says which of
    scikit-learn's 1797 digits each image shows.
    """

    num_classes = 10

    def __init__(
        self,
        split: str = "train",
        num_samples: int | None = None,
        canvas_size: int = 64,
        scale: int = 3,
        num_fragments: int = 6,
        fragment_size: int = 3,
        num_blots: int = 0,
        seed: int = 0,
        return_box: bool = False,
    ):
        if split not in SPLITS:
            raise ValueError(
                f"ClutteredDigits: split must be 'train', 'val' or 'test', got {split!r}."
            )
        side = 8 * scale
        if scale < 1 or canvas_size < side:
            raise ValueError(
                f"ClutteredDigits: canvas_size={canvas_size} must be at least the digit's side "
                f"8 * scale = {side}; use a larger canvas or a smaller scale."
            )
        if not 1 <= fragment_size <= 8:
            raise ValueError(
                f"ClutteredDigits: fragment_size must be in 1..8, got {fragment_size}."
            )
        if num_fragments < 0 or num_blots < 0:
            raise ValueError(
                f"ClutteredDigits: num_fragments and num_blots must be 0 or more, got "
                f"{num_fragments} and {num_blots}."
            )
        all_images, all_labels = _load_digits()
        indices = _source_indices(split, all_labels)
        src_images, src_labels = all_images[indices], all_labels[indices]
        n = len(src_images) if num_samples is None else int(num_samples)
        if n < 1:
            raise ValueError(f"ClutteredDigits: num_samples must be positive, got {num_samples}.")
        # One random stream per (seed, split): no two splits or seeds share clutter.
        g = torch.Generator().manual_seed(seed * len(SPLITS) + SPLITS.index(split))
        which = torch.randint(len(src_images), (n,), generator=g)
        up = torch.nn.functional.interpolate(
            src_images[:, None], scale_factor=scale, mode="nearest"
        )
        frag = fragment_size * scale
        images = torch.zeros(n, 1, canvas_size, canvas_size)
        boxes = torch.empty(n, 4, dtype=torch.long)
        for i in range(n):
            canvas = images[i, 0]
            y0, x0 = torch.randint(canvas_size - side + 1, (2,), generator=g).tolist()
            for _ in range(num_blots):
                _blot(canvas, (x0, y0, x0 + side, y0 + side), side, g)
            for _ in range(num_fragments):  # clutter first, the digit on top
                j = int(torch.randint(len(src_images), (1,), generator=g))
                sy, sx = torch.randint(side - frag + 1, (2,), generator=g).tolist()
                y, x = torch.randint(canvas_size - frag + 1, (2,), generator=g).tolist()
                piece = up[j, 0, sy : sy + frag, sx : sx + frag]
                canvas[y : y + frag, x : x + frag].copy_(
                    torch.maximum(canvas[y : y + frag, x : x + frag], piece)
                )
            region = canvas[y0 : y0 + side, x0 : x0 + side]
            region.copy_(torch.maximum(region, up[which[i], 0]))
            boxes[i] = torch.tensor([x0, y0, x0 + side, y0 + side])
        self.images = images
        self.labels = src_labels[which]
        self.sources = indices[which]
        self.boxes = boxes
        self.return_box = return_box

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.return_box:
            return {"image": self.images[i], "label": self.labels[i], "box": self.boxes[i]}
        return self.images[i], self.labels[i]
