"""The CUDA room declines the paper's ablations (max, one gate): they take the plain path and
give the plain maths there; the paper's BAM still takes the room (under the interpreter)."""

import pytest
import torch

from tests.cuda.conftest import IN_PROCESS
from tests.helpers import assert_close, randomize_
from tests.test_bam_ablations import VARIANTS, reference
from torch_bam import BAM, dispatch
from torch_bam.functional import set_backend

pytestmark = pytest.mark.skipif(not IN_PROCESS, reason="triton was imported without interpreter")


@pytest.mark.parametrize("kw", VARIANTS, ids=str)
def test_ablations_take_the_plain_path_and_match(kw):
    set_backend("triton")
    try:
        x = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(0))
        assert dispatch.block_path(randomize_(BAM(32, reduction_ratio=4)).eval(), x) == "cuda"
        block = randomize_(BAM(32, reduction_ratio=4, **kw)).eval()
        assert dispatch.block_path(block, x) == "plain"
        with torch.no_grad():
            assert_close(block(x), reference(block, x))
    finally:
        set_backend("auto")
