"""torch.hub entry points: every torch_bam network, by its registered name.

    model = torch.hub.load("<owner>/torch-bam", "bam_resnet50", num_classes=1000)
    model = torch.hub.load("/path/to/torch-bam", "bam_resnet18", source="local")

No pretrained weights are published; ``pretrained=True`` is an error.
"""

import sys
from pathlib import Path

dependencies = ["torch"]

# A checkout has the package under src/; an installed torch_bam is used if there is one.
try:
    import torch_bam
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    import torch_bam


def _entry(name):
    def entry(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError(f"{name}: torch_bam publishes no pretrained weights.")
        return torch_bam.create_model(name, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"torch_bam.create_model({name!r}, **kwargs)"
    return entry


for _name in torch_bam.list_models():
    globals()[_name] = _entry(_name)
