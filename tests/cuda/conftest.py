"""Run the CUDA path's Triton kernels on CPU, under the Triton interpreter.

The interpreter must be chosen before triton is imported (triton's own helpers, tl.sigmoid for
one, are compiled or interpreted at its import). This conftest is loaded before the tests of
this folder are collected, and sets TRITON_INTERPRET=1 for the rest of the session. If triton
was already imported without the interpreter (another test module imported torch._dynamo
first, say), it leaves the process as it is: IN_PROCESS is False, the tests here skip, and
test_kernels.py::test_in_a_subprocess runs this folder again in a fresh interpreter.
"""

import os
import sys

import pytest

if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from torch_bam.cuda import kernels  # noqa: E402

IN_PROCESS = kernels.INTERPRETED
