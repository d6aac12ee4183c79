"""torch_bam.cuda.support: where the Triton path may run and where it is the default, on
faked devices (the GPU's vendor, compute capability and the triton version are monkeypatched:
no GPU is needed to check the decisions)."""

import json
import re
import types
from pathlib import Path

import pytest
import torch

from torch_bam import dispatch, functional
from torch_bam.cuda import gate as cuda_gate
from torch_bam.cuda import support

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gpu(monkeypatch):
    """Fake an NVIDIA GPU of a given compute capability (or a ROCm build): ``gpu((8, 6))``."""

    def fake(cc=(9, 0), hip=None, triton="3.6.0"):
        monkeypatch.setattr(torch.version, "hip", hip)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cc)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(support, "_triton_version", lambda: triton)
        support.clear_cache()
        return types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16)

    yield fake
    support.clear_cache()


@pytest.fixture
def table(monkeypatch, tmp_path):
    """A verified table holding the given classes instead of the shipped one."""

    def fake(*classes):
        path = tmp_path / "verified.json"
        entries = [{"vendor": v, "capability": list(cc), "gpu": "test", "date": "2026-12-07"}
                   for v, cc in classes]  # fmt: skip
        path.write_text(json.dumps({"classes": entries}))
        monkeypatch.setattr(support, "TABLE", path)
        support.clear_cache()

    return fake


@pytest.fixture
def backend():
    yield functional.set_backend
    functional.set_backend("auto")


def test_the_shipped_table_is_empty_and_packaged():
    assert json.loads(support.TABLE.read_text())["classes"] == []
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^torch_bam = \[.*"cuda/\*\.json".*\]$', text, re.M)


@pytest.mark.parametrize("cc", [(8, 0), (8, 6), (8, 9), (9, 0)])
def test_nvidia_sm80_to_sm90_with_a_tested_triton_can_run_it(gpu, cc):
    assert support.reasons(gpu(cc).device) == []


@pytest.mark.parametrize(("cc", "why"), [((6, 1), "sm_61"), ((7, 5), "sm_75"), ((10, 0), "sm_100")])
def test_other_compute_capabilities_cannot(gpu, cc, why):
    (reason, fix), = support.reasons(gpu(cc).device)
    assert why in reason and "sm_80..sm_90" in reason


def test_rocm_cannot(gpu):
    (reason, _), = support.reasons(gpu((9, 0), hip="6.2").device)
    assert "ROCm" in reason


@pytest.mark.parametrize("version", ["3.0.0", "3.5.1", "4.0.0"])
def test_untested_triton_releases_cannot(gpu, version):
    (reason, fix), = support.reasons(gpu(triton=version).device)
    assert version in reason and "triton>=3.6,<4" in fix


def test_cpu_only_under_the_interpreter(monkeypatch):
    support.clear_cache()
    monkeypatch.setattr(support, "_interpreted", lambda: False)
    try:
        (reason, fix), = support.reasons("cpu")
        assert "interpreter" in reason and "TRITON_INTERPRET=1" in fix
    finally:
        support.clear_cache()


@pytest.mark.parametrize("cc", [(9, 0), (8, 9)])
def test_auto_takes_the_plain_path_on_cuda_unless_the_class_is_verified(gpu, table, backend, cc):
    x = gpu(cc)
    table()
    assert not dispatch._cuda_room("auto", x)
    assert cuda_gate._triton_kernels(x) is None  # the gate op: the ATen composition
    table(("nvidia", cc))
    assert dispatch._cuda_room("auto", x)
    assert cuda_gate._triton_kernels(x) is not None
    table(("nvidia", (8, 0)) if cc != (8, 0) else ("nvidia", (9, 0)))
    assert not dispatch._cuda_room("auto", x)  # another class's entry


def test_auto_never_picks_it_where_it_cannot_run_even_if_listed(gpu, table):
    table(("nvidia", (6, 1)), ("nvidia", (9, 0)))
    assert not dispatch._cuda_room("auto", gpu((6, 1)))
    assert not dispatch._cuda_room("auto", gpu((9, 0), hip="6.2"))  # ROCm: no NVIDIA class
    assert not dispatch._cuda_room("auto", gpu((9, 0), triton="3.2.0"))
    assert dispatch._cuda_room("auto", gpu((9, 0)))


@pytest.mark.parametrize(
    ("fake", "words"),
    [(dict(cc=(6, 1)), "sm_61"), (dict(hip="6.2"), "ROCm"), (dict(triton="3.2.0"), "3.2.0")],
)
def test_forcing_it_where_it_cannot_run_is_one_line_with_the_fix(gpu, backend, fake, words):
    x = gpu(**fake)
    backend("triton")
    for call in (lambda: dispatch._cuda_room("triton", x), lambda: cuda_gate._triton_kernels(x)):
        with pytest.raises(RuntimeError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and words in msg and "Fix:" in msg, msg


def test_forcing_it_where_it_can_run_takes_the_cuda_room(gpu, table, backend):
    table()  # not verified: forced anyway
    x = gpu((8, 0))
    backend("triton")
    assert dispatch._cuda_room("triton", x)
    assert cuda_gate._triton_kernels(x) is not None


def test_the_environment_variable_opts_in_and_set_backend_wins(monkeypatch):
    monkeypatch.setattr(functional, "_backend", None)
    monkeypatch.setenv("TORCH_BAM_BACKEND", "triton")
    assert functional.get_backend() == "triton"
    monkeypatch.setenv("TORCH_BAM_BACKEND", "")
    assert functional.get_backend() == "auto"
    monkeypatch.setenv("TORCH_BAM_BACKEND", "fast")
    with pytest.raises(ValueError, match="TORCH_BAM_BACKEND='fast'"):
        functional.get_backend()
    monkeypatch.setenv("TORCH_BAM_BACKEND", "triton")
    functional.set_backend("aten")
    assert functional.get_backend() == "aten"
    monkeypatch.setenv("TORCH_BAM_FORCE_REFERENCE", "1")
    assert functional.get_backend() == "reference"


def test_pyproject_admits_only_tested_versions():
    text = (ROOT / "pyproject.toml").read_text()
    # torch 2.11 pins triton 3.6 (tl.dot's input_precision, and the first tested triton).
    assert re.search(r'^dependencies = \["torch>=2\.11"\]$', text, re.M)
    assert re.search(r'^ *"triton>=3\.6,<4; ', text, re.M)
    assert support.TRITON_TESTED == ((3, 6), (4, 0))


def test_one_calls_reasons_do_not_leak_into_the_next(monkeypatch):
    """(The triton check is kept once for all devices: a device's own reasons are added to a
    copy of it.)"""
    support.clear_cache()
    try:
        monkeypatch.setattr(support, "_interpreted", lambda: False)
        assert support.reasons("cpu")
        monkeypatch.setattr(support, "_interpreted", lambda: True)
        assert support.reasons("cpu") == []
    finally:
        support.clear_cache()
