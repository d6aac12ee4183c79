"""torch.hub entry points: every torch_bam network, by its registered name.

``torch.hub.load`` takes a GitHub repository as ``owner/name``, or a local directory with
``source="local"``. This project has no public repository address yet, so use a clone:

    model = torch.hub.load("/path/to/torch-bam", "bam_resnet50", source="local")
    model = torch.hub.load("OWNER/torch-bam", "bam_resnet50")  # OWNER: where your copy is hosted

Keyword arguments go to ``torch_bam.create_model`` (``num_classes=10``, ``combine=...``).
``pretrained=True`` loads the architecture's default weights (``torch_bam.list_pretrained()``),
``tag=`` picks others, ``file=`` loads a weight file you have:

    model = torch.hub.load(path, "bam_resnet50", source="local", pretrained=True)
    model = torch.hub.load(path, "bam_resnet50", source="local", pretrained=True,
                           tag="official_in1k", file="RESNET50_IMAGENET_BAM_best.pth.tar")
"""

# Private names: torch.hub lists every public callable here as an entry point.
import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch"]

# A clone has the package under src/: load that one, not an other version installed beside it
# (a torch_bam imported before the hub call stays the one in use).
_src = _Path(__file__).resolve().parent / "src"
if (_src / "torch_bam").is_dir() and str(_src) not in _sys.path:
    _sys.path.insert(0, str(_src))
import torch_bam  # noqa: E402


def _entry(name):
    def entry(pretrained: bool = False, tag: str = "", **kwargs):
        full = f"{name}.{tag}" if tag else name  # a hub entry name cannot hold the tag
        return torch_bam.create_model(full, pretrained=pretrained, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"torch_bam.create_model('{name}[.tag]', pretrained=False, **kwargs)"
    return entry


for _name in torch_bam.list_models():
    globals()[_name] = _entry(_name)
