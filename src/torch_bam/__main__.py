"""``python -m torch_bam``: the ``torch-bam`` command, for an environment without its script."""

import sys

from .cli import main

sys.exit(main())
