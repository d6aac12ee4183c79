"""The demo's claims follow the comparison engine's rule: :mod:`torch_bam.compare.claims`."""

from ..compare.claims import Comparison, compare, describe, localisation_claim, summarize

__all__ = ["Comparison", "compare", "describe", "localisation_claim", "summarize"]
