"""torch-bam: BAM, the Bottleneck Attention Module (Park et al., BMVC 2018), for PyTorch.

https://arxiv.org/abs/1807.06514
"""

from .attention import AttentionMaps, record_attention
from .bam import BAM, ChannelGate, SpatialGate
from .functional import bam_gate
from .insert import BAMInsertion, BAMReport, add_bam
from .models import create_model, list_models, list_pretrained, save_pretrained

__version__ = "0.1.0"

__all__ = [
    "BAM",
    "AttentionMaps",
    "BAMInsertion",
    "BAMReport",
    "ChannelGate",
    "SpatialGate",
    "add_bam",
    "bam_gate",
    "create_model",
    "list_models",
    "list_pretrained",
    "record_attention",
    "save_pretrained",
]
