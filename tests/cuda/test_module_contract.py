"""tests/test_module_contract.py's tests on the CUDA room: backend "triton", under the Triton
interpreter. Each test first checks that the unchanged block takes the CUDA room."""

import pytest

from tests.cuda.conftest import IN_PROCESS
from tests.test_module_contract import (  # noqa: F401 (collected here with this file's path)
    WIDE,
    Path,
    test_a_conv_or_linear_with_other_weights_changes_the_output,
    test_a_hook_on_any_one_module_fires_once,
    test_a_parametrized_layer_trains,
    test_a_pruned_layer_trains_for_several_steps,
    test_a_subclassed_conv_or_linear_changes_the_output,
    test_forward_hooks_on_every_module_fire_once,
    test_global_module_hooks_see_every_module_once,
    test_prepare_qat_fake_quantises_and_observes_every_conv_and_linear,
)
from torch_bam.functional import set_backend

CUDA_ROOM = Path("triton", WIDE, ("cuda", None), ("cuda", None))


@pytest.fixture
def path():
    if not IN_PROCESS:
        pytest.skip("triton was imported without the interpreter: see test_in_a_subprocess")
    set_backend("triton")
    yield CUDA_ROOM
    set_backend("auto")
