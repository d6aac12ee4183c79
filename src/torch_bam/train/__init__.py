"""Training with Lightning (needs the ``train`` extra): ImageClassifier, callbacks, the CLI."""

from .module import ImageClassifier, NonFiniteLossError

__all__ = ["ImageClassifier", "NonFiniteLossError"]
