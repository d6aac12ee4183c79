"""Datasets and Lightning data modules (needs the ``train`` extra, except ClutteredDigits)."""

from .cluttered_digits import ClutteredDigits

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ClutteredDigits",
    "ClutteredDigitsDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
]


def __getattr__(name: str):
    # Data modules need Lightning; import them only when asked for.
    if name in __all__:
        from . import datamodules

        return getattr(datamodules, name)
    raise AttributeError(name)
