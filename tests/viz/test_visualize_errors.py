"""``torch-bam visualize`` on bad input: exit status 2, one line on stderr, nothing on disk."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from torch_bam import create_model
from torch_bam.cli import main
from torch_bam.viz import save_checkpoint

META = {"num_classes": 10, "in_chans": 1, "image_size": 32, "mean": [0.1], "std": [0.3]}


def _raw_checkpoint(path, model_name="bam_small_cnn", weights_of=None, **changes):
    """A torch-bam checkpoint written with torch.save, so that it can be wrong on purpose."""
    meta = {**META, **changes}
    torch.manual_seed(0)
    model = create_model(
        weights_of or model_name, num_classes=META["num_classes"], in_chans=META["in_chans"]
    )
    payload = {"format": "torch-bam/1", "model": model_name, **meta}
    torch.save({**payload, "state_dict": model.state_dict()}, path)
    return path


def _png(path, size=(40, 50)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(path)
    return path


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    )


def _truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


# Each case: (tmp_path, ckpt, img, out) -> (argv after "visualize", words the message must hold)
def _bad_image(kind):
    def make(tmp, ckpt, img, out):
        bad = tmp / f"{kind}.png"
        if kind == "missing":
            bad = tmp / "none.png"
        elif kind == "text":
            bad.write_text("not an image\n")
        elif kind == "empty":
            bad.write_bytes(b"")
        elif kind == "truncated":
            _truncated(_png(tmp / "big.png", (200, 200)), bad)
        elif kind == "directory":
            bad = tmp / "a_dir"
            bad.mkdir()
        return [str(ckpt), str(img), str(bad), "--out", str(out)], [str(bad)]

    return make


def _bad_checkpoint(kind):
    def make(tmp, ckpt, img, out):
        bad = tmp / f"{kind}.pt"
        if kind == "missing":
            bad = tmp / "none.pt"
        elif kind == "corrupt":
            bad.write_bytes(np.random.default_rng(0).bytes(4096))  # the same bytes each run
        elif kind == "truncated":
            _truncated(ckpt, bad)
        elif kind == "empty":
            bad.write_bytes(b"")
        elif kind == "text":
            bad.write_text("model: bam_small_cnn\n")
        elif kind == "not_a_dict":
            torch.save([torch.zeros(3)], bad)
        elif kind == "no_state_dict":
            torch.save({"model": "bam_small_cnn", "weights": torch.zeros(3)}, bad)
        elif kind == "no_model_name":
            torch.save({"state_dict": {}}, bad)
        elif kind == "unknown_model":
            _raw_checkpoint(bad, model_name="bam_nonesuch", weights_of="bam_small_cnn")
        elif kind == "wrong_model":  # names small_cnn, holds bam_small_cnn's weights
            _raw_checkpoint(bad, model_name="small_cnn", weights_of="bam_small_cnn")
        elif kind == "wrong_classes":
            _raw_checkpoint(bad, num_classes=3)
        elif kind == "wrong_in_chans":
            _raw_checkpoint(bad, in_chans=3, mean=[0.1] * 3, std=[0.3] * 3)
        elif kind == "zero_classes":
            _raw_checkpoint(bad, num_classes=0)
        elif kind == "absurd_classes":  # a head of 10^13 x 64 floats: named, never allocated
            _raw_checkpoint(bad, num_classes=10**13)
        elif kind == "no_bam":
            _raw_checkpoint(bad, model_name="small_cnn")
        return [str(bad), str(img), "--out", str(out)], [str(bad)]

    return make


def _bad_meta(words, **changes):
    def make(tmp, ckpt, img, out):
        bad = _raw_checkpoint(tmp / "meta.pt", **changes)
        return [str(bad), str(img), "--out", str(out)], words

    return make


def _bad_top_k(k):
    def make(tmp, ckpt, img, out):
        return [str(ckpt), str(img), "--out", str(out), "--top-k", str(k)], ["--top-k", str(k)]

    return make


def _out_is_a_file(tmp, ckpt, img, out):
    out.write_text("I was here first\n")
    return [str(ckpt), str(img), "--out", str(out)], [str(out), "is a file"]


def _out_under_a_file(tmp, ckpt, img, out):
    parent = tmp / "plain_file"
    parent.write_text("")
    bad = parent / "sub" / "out"
    return [str(ckpt), str(img), "--out", str(bad)], [str(parent), "not a directory"]


def _out_not_writable(tmp, ckpt, img, out):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere: chmod cannot make a directory unwritable")
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return [str(ckpt), str(img), "--out", str(locked / "out")], [str(locked), "not writable"]


CASES = {
    **{f"image_{k}": _bad_image(k) for k in ("missing", "text", "empty", "truncated", "directory")},
    **{
        f"checkpoint_{k}": _bad_checkpoint(k)
        for k in (
            "missing",
            "corrupt",
            "truncated",
            "empty",
            "text",
            "not_a_dict",
            "no_state_dict",
            "no_model_name",
            "unknown_model",
            "wrong_model",
            "wrong_classes",
            "wrong_in_chans",
            "zero_classes",
            "absurd_classes",
            "no_bam",
        )
    },
    "image_size_0": _bad_meta(["image_size", "0"], image_size=0),
    "image_size_text": _bad_meta(["image_size"], image_size="big"),
    "mean_too_long": _bad_meta(["mean", "1 input channel"], mean=[0.1, 0.2, 0.3]),
    "std_too_short": _bad_meta(["std", "1 input channel"], std=[]),
    "std_zero": _bad_meta(["std", "0"], std=[0.0]),
    "std_nan": _bad_meta(["std", "nan"], std=[float("nan")]),
    "top_k_0": _bad_top_k(0),
    "top_k_negative": _bad_top_k(-3),
    "out_is_a_file": _out_is_a_file,
    "out_under_a_file": _out_under_a_file,
    "out_not_writable": _out_not_writable,
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A good checkpoint and a good image, outside each case's own directory."""
    d = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    model = create_model("bam_small_cnn", num_classes=10, in_chans=1)
    save_checkpoint(str(d / "model.pt"), "bam_small_cnn", model, **META)
    return d / "model.pt", _png(d / "img.png")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(case, good, tmp_path, capsys):
    ckpt, img = good
    argv, words = CASES[case](tmp_path, ckpt, img, tmp_path / "out")
    before = _files(tmp_path)
    assert main(["visualize", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torch-bam visualize: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert _files(tmp_path) == before  # no output directory, no picture, no temporary file


def test_the_good_input_of_these_cases_works(good, tmp_path):
    # The cases above differ from this by their one bad input only.
    ckpt, img = good
    assert main(["visualize", str(ckpt), str(img), "--out", str(tmp_path / "out")]) == 0
    assert _files(tmp_path) == ["out", os.path.join("out", "attention.png")]


def test_a_failed_write_removes_the_directories_it_made(good, tmp_path, capsys, monkeypatch):
    import errno

    import torch_bam.viz.attention as attention

    def disk_full(path, write, binary=True):
        os.makedirs(os.path.dirname(path), exist_ok=True)  # as atomic_write does, then fails
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(attention, "atomic_write", disk_full)
    ckpt, img = good
    out = tmp_path / "new" / "out"
    assert main(["visualize", str(ckpt), str(img), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and err.count("\n") == 1
    assert _files(tmp_path) == []
