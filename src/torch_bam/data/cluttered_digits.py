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

_NUM_TEST = 297  # the last 297 of the 1797 digits are held out; the rest train


def _load_digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.as_tensor(d.images, dtype=torch.float32) / 16.0  # [N, 8, 8] in [0, 1]
    return images, torch.as_tensor(d.target, dtype=torch.long)


class ClutteredDigits(Dataset):
    """Deterministic cluttered digits: ``dataset[i] -> (image [1, S, S], label)``.

    Args:
        split: ``"train"`` (1500 source digits) or ``"test"`` (297 other digits).
        num_samples: images to generate (sources are reused with new positions and clutter).
        canvas_size: side ``S`` of the square canvas.
        scale: integer upscaling of each 8x8 digit (digit side ``8 * scale``).
        num_fragments: clutter pieces per image, each a random crop of another digit.
        fragment_size: side of a fragment, in source (8x8) pixels, before upscaling.
        seed: everything (positions, clutter, which digit) follows from it.
        return_box: if true, items are dicts ``{"image", "label", "box"}``.

    ``dataset.images`` ``[N, 1, S, S]``, ``dataset.labels`` ``[N]`` and ``dataset.boxes``
    ``[N, 4]`` (``x0, y0, x1, y1``) hold everything.
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
        seed: int = 0,
        return_box: bool = False,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"ClutteredDigits: split must be 'train' or 'test', got {split!r}.")
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
        src_images, src_labels = _load_digits()
        if split == "train":
            src_images, src_labels = src_images[:-_NUM_TEST], src_labels[:-_NUM_TEST]
        else:
            src_images, src_labels = src_images[-_NUM_TEST:], src_labels[-_NUM_TEST:]
        n = len(src_images) if num_samples is None else int(num_samples)
        if n < 1:
            raise ValueError(f"ClutteredDigits: num_samples must be positive, got {num_samples}.")
        # Different streams for train and test, so the two splits never share clutter.
        g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
        which = torch.randint(len(src_images), (n,), generator=g)
        up = torch.nn.functional.interpolate(
            src_images[:, None], scale_factor=scale, mode="nearest"
        )
        frag = fragment_size * scale
        images = torch.zeros(n, 1, canvas_size, canvas_size)
        boxes = torch.empty(n, 4, dtype=torch.long)
        for i in range(n):
            canvas = images[i, 0]
            for _ in range(num_fragments):  # clutter first, the digit on top
                j = int(torch.randint(len(src_images), (1,), generator=g))
                sy, sx = torch.randint(side - frag + 1, (2,), generator=g).tolist()
                y, x = torch.randint(canvas_size - frag + 1, (2,), generator=g).tolist()
                piece = up[j, 0, sy : sy + frag, sx : sx + frag]
                canvas[y : y + frag, x : x + frag].copy_(
                    torch.maximum(canvas[y : y + frag, x : x + frag], piece)
                )
            y0, x0 = torch.randint(canvas_size - side + 1, (2,), generator=g).tolist()
            region = canvas[y0 : y0 + side, x0 : x0 + side]
            region.copy_(torch.maximum(region, up[which[i], 0]))
            boxes[i] = torch.tensor([x0, y0, x0 + side, y0 + side])
        self.images = images
        self.labels = src_labels[which]
        self.boxes = boxes
        self.return_box = return_box

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.return_box:
            return {"image": self.images[i], "label": self.labels[i], "box": self.boxes[i]}
        return self.images[i], self.labels[i]
