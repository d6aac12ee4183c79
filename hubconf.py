"""torch.hub entry points: every torch_bam network, by its registered name.

``torch.hub.load`` takes a GitHub repository as ``owner/name``, or a local directory with
``source="local"``. This project has no public repository address yet, so use a clone:

    model = torch.hub.load("/path/to/torch-bam", "bam_resnet50", source="local")
    model = torch.hub.load("OWNER/torch-bam", "bam_resnet50")  # OWNER: where your copy is hosted

Keyword arguments go to ``torch_bam.create_model`` (``num_classes=10``, ``combine=...``).
No pretrained weights ship: ``pretrained=True`` is an error that says how to load the official
code's checkpoint (``torch_bam.compat.official_bam_resnet``).
"""

import sys
from pathlib import Path

dependencies = ["torch"]

# A clone has the package under src/: load that one, not an other version installed beside it
# (a torch_bam imported before the hub call stays the one in use).
_src = Path(__file__).resolve().parent / "src"
if (_src / "torch_bam").is_dir() and str(_src) not in sys.path:
    sys.path.insert(0, str(_src))
import torch_bam  # noqa: E402


def _entry(name):
    def entry(pretrained: bool = False, **kwargs):
        return torch_bam.create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"torch_bam.create_model({name!r}, **kwargs)"
    return entry


for _name in torch_bam.list_models():
    globals()[_name] = _entry(_name)
