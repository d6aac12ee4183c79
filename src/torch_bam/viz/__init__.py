"""Figures for BAM: attention grids and learning curves (needs the ``viz`` extra: matplotlib).

Every figure is drawn with matplotlib's Agg backend, so no display is needed.
"""

from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]
