"""A short example run: a small CNN with BAM learns where a bright square is.

It needs only torch and no data: each image is noise with one bright square in one of four
quadrants, and the label is the quadrant. The run prints the loss, the accuracy, and how often
the spatial attention of the BAM block peaks in the square's quadrant.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from .attention import record_attention
from .bam import BAM
from .errors import UsageError


def make_batch(n: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    images = 0.3 * torch.randn(n, 3, size, size, generator=generator)
    labels = torch.randint(0, 4, (n,), generator=generator)
    side = size // 4
    for i, q in enumerate(labels.tolist()):
        top = (q // 2) * size // 2 + int(
            torch.randint(0, size // 2 - side + 1, (1,), generator=generator)
        )
        left = (q % 2) * size // 2 + int(
            torch.randint(0, size // 2 - side + 1, (1,), generator=generator)
        )
        images[i, :, top : top + side, left : left + side] += 2.0
    return images, labels


def small_bam_cnn(num_classes: int = 4) -> nn.Sequential:
    """Two conv stages with a BAM at the bottleneck between them (before the downsampling)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        BAM(32, reduction_ratio=8),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def quadrant_hit_rate(spatial_logits: Tensor, labels: Tensor) -> float:
    """Fraction of images whose spatial attention peaks in the labelled quadrant."""
    b, _, h, w = spatial_logits.shape
    flat = spatial_logits.reshape(b, -1).argmax(dim=1)
    rows, cols = flat // w, flat % w
    quadrant = (rows >= h // 2).long() * 2 + (cols >= w // 2).long()
    return (quadrant == labels).float().mean().item()


def _evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Test accuracy, and the quadrant hit rate of the BAM's spatial attention."""
    model.eval()
    with torch.no_grad(), record_attention(model) as maps:
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return accuracy, quadrant_hit_rate(maps["3"].spatial_logits, y)


def run(steps: int = 150, batch_size: int = 32, size: int = 32, seed: int = 0) -> dict[str, float]:
    """Train for ``steps`` SGD steps, print the progress and return the measured numbers."""
    if steps < 1:
        raise UsageError(
            f"--steps must be at least 1, got {steps}: the example reports the loss of its first "
            f"and last training steps. Pass a positive count, e.g. --steps 150 (the default)."
        )
    if batch_size < 1 or size < 4:  # the square is size // 4 pixels wide
        raise UsageError(f"run: need batch_size >= 1 and size >= 4, got {batch_size} and {size}.")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = small_bam_cnn()
    bam_params = sum(
        p.numel() for m in model.modules() if isinstance(m, BAM) for p in m.parameters()
    )
    total = sum(p.numel() for p in model.parameters())
    print(f"model: {total:,} parameters, of which BAM {bam_params:,}")
    x_test, y_test = make_batch(512, size, gen)
    hit_before = _evaluate(model, x_test, y_test)[1]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = time.perf_counter()
    first_loss = last_loss = float("nan")
    model.train()
    for step in range(1, steps + 1):
        x, y = make_batch(batch_size, size, gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1:
            first_loss = loss.item()
        last_loss = loss.item()
        if step % 25 == 0 or step in (1, steps):
            print(f"step {step:4d}/{steps}  loss {loss.item():.4f}")
    train_time = time.perf_counter() - start
    accuracy, hit = _evaluate(model, x_test, y_test)
    result = {
        "first_loss": first_loss,
        "last_loss": last_loss,
        "test_accuracy": accuracy,
        "attention_quadrant_hit_rate": hit,
        "attention_quadrant_hit_rate_untrained": hit_before,
        "chance_hit_rate": 0.25,
        "train_seconds": train_time,
    }
    print(
        f"loss {first_loss:.3f} -> {last_loss:.3f} in {train_time:.1f}s; "
        f"test accuracy {accuracy:.1%} on 512 new images; "
        f"spatial attention peaks in the square's quadrant for {hit:.1%} "
        f"(untrained: {hit_before:.1%}, chance: 25%)"
    )
    return result
