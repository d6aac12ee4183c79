"""Pretrained weights by name: the download into torch.hub's cache, its failures, fine-tuning,
and the same weights through create_model, timm and torch.hub. Nothing is downloaded from the
internet: the weight files are made here (random weights, laid out and zipped as the real ones
are), and served from file:// addresses or refused by a closed port on 127.0.0.1."""

import hashlib
import logging
import socket
import zipfile
from pathlib import Path

import pytest
import torch

import torch_bam
from torch_bam import BAM
from torch_bam.compat import convert_official_state_dict, convert_pytorchcv_state_dict
from torch_bam.models._cfg import get_pretrained_cfg

ROOT = Path(__file__).resolve().parents[2]
PTCV = get_pretrained_cfg("bam_resnet50.ptcv_in1k")
NAME = "bam_resnet50-0547-a04adf3c.pth"  # the file pytorchcv's archive holds


@pytest.fixture(scope="module")
def ptcv_weights(tmp_path_factory):
    """A random pytorchcv bam_resnet50 state_dict, saved and zipped as pytorchcv ships it:
    (state_dict, zip path, .pth path, SHA-1 of the .pth)."""
    bamresnet = pytest.importorskip("pytorchcv.models.bamresnet")
    torch.manual_seed(0)
    net = bamresnet.bam_resnet50()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    root = tmp_path_factory.mktemp("ptcv")
    pth = root / NAME
    torch.save(net.state_dict(), pth)
    archive = root / f"{NAME}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.write(pth, NAME)
    sha1 = hashlib.sha1(pth.read_bytes()).hexdigest()
    return net.state_dict(), archive, pth, sha1


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _loaded(model, ptcv_state_dict, skip=()):
    expected = convert_pytorchcv_state_dict(ptcv_state_dict)
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in expected.items() if k not in skip)


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_registered_configurations():
    assert {"bam_resnet50.ptcv_in1k", "bam_resnet50.official_in1k"} <= set(
        torch_bam.list_pretrained()
    )
    assert get_pretrained_cfg("bam_resnet50", pretrained=True).tag == "ptcv_in1k"  # default
    assert PTCV.url.endswith(f"/v0.0.499/{NAME}.zip") and PTCV.hash_sha1.startswith("a04adf3c")
    official = get_pretrained_cfg("bam_resnet50.official_in1k")
    for cfg in (PTCV, official):
        assert cfg.model_args == {"stride_in_3x3": True, "combine": "product"}
        assert cfg.license and cfg.paper_ids and cfg.published_top1 and cfg.num_classes == 1000
    model = torch_bam.create_model("bam_resnet50.official_in1k")  # the layout, no weights
    assert model.layer2[0].conv2.stride == (2, 2) and model.bam1.combine == "product"


def test_download_checks_caches_and_reads_the_cache_again(ptcv_weights, torch_home):
    state_dict, archive, _, sha1 = ptcv_weights
    overlay = dict(url=archive.as_uri(), hash_sha1=sha1)
    model = torch_bam.create_model("bam_resnet50", pretrained=True, pretrained_cfg_overlay=overlay)
    assert sorted(p.name for p in torch_home.iterdir()) == [NAME]  # unzipped, nothing else
    assert hashlib.sha1((torch_home / NAME).read_bytes()).hexdigest() == sha1
    assert _loaded(model, state_dict)
    assert {m.combine for m in model.modules() if isinstance(m, BAM)} == {"product"}

    # Second call: the cache, not the address (which now points nowhere).
    overlay["url"] = (archive.parent / "gone.zip").as_uri()
    again = torch_bam.create_model("bam_resnet50", pretrained=True, pretrained_cfg_overlay=overlay)
    assert _loaded(again, state_dict)


def test_a_cached_file_with_another_hash_is_refused(ptcv_weights, torch_home):
    *_, sha1 = ptcv_weights
    torch_home.mkdir(parents=True)
    (torch_home / NAME).write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="cached weight file") as error:
        torch_bam.create_model(
            "bam_resnet50", pretrained=True, pretrained_cfg_overlay=dict(hash_sha1=sha1)
        )
    assert str(torch_home / NAME) in _one_line(error) and "Delete it" in str(error.value)


def _small_zip(path: Path, content: bytes = b"weights") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(NAME, content)
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["wrong hash", "truncated zip", "missing file", "no network"])
def test_download_failures_are_one_line_and_leave_the_cache_clean(case, tmp_path, torch_home):
    good = _small_zip(tmp_path / f"{NAME}.zip")
    if case == "wrong hash":
        url, match = good.as_uri(), "has SHA-1"
    elif case == "truncated zip":
        cut = tmp_path / "cut.zip"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        url, match = cut.as_uri(), "truncated or corrupt"
    elif case == "missing file":
        url, match = (tmp_path / "missing.zip").as_uri(), "could not download"
    else:
        url, match = f"http://127.0.0.1:{_closed_port()}/{NAME}.zip", "could not download"
    from torch_bam.models._download import fetch

    # The registered configuration with the test's address (create_model's path to fetch is
    # test_no_network_through_create_model's).
    with pytest.raises(ValueError, match=match) as error:
        fetch(PTCV.replace(url=url), progress=False)
    message = _one_line(error)
    assert url in message and str(torch_home / NAME) in message and "by hand" in message
    assert list(torch_home.iterdir()) == []  # no partial download, no half-unzipped file


def test_a_stalled_download_times_out_in_one_line(tmp_path, torch_home, monkeypatch):
    """A server that sends its headers, then nothing: the download gives up after the timeout
    (TORCH_BAM_DOWNLOAD_TIMEOUT, seconds without data) instead of hanging."""
    import http.server
    import threading

    release = threading.Event()

    class Stall(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.flush()
            release.wait(10)  # bounded: the test releases it at once when done

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_BAM_DOWNLOAD_TIMEOUT", "0.5")
    url = f"http://127.0.0.1:{server.server_address[1]}/{NAME}.zip"
    from torch_bam.models._download import fetch

    try:
        with pytest.raises(ValueError, match="no data for 0.5 s") as error:
            fetch(PTCV.replace(url=url), progress=False)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    message = _one_line(error)
    assert url in message and "TORCH_BAM_DOWNLOAD_TIMEOUT" in message and "file=PATH" in message
    assert list(torch_home.iterdir()) == []


def test_a_cache_that_cannot_be_created_is_one_line(tmp_path, monkeypatch):
    # Under a file, so that it cannot be created even as root (a read-only TORCH_HOME would be).
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "file" / "torch_home"))
    from torch_bam.models._download import fetch

    with pytest.raises(ValueError, match="cannot create the weight cache") as error:
        fetch(PTCV, progress=False)
    message = _one_line(error)
    assert str(tmp_path / "file" / "torch_home") in message
    assert "TORCH_HOME" in message and "file=PATH" in message


def test_no_network_through_create_model(torch_home):
    url = f"http://127.0.0.1:{_closed_port()}/{NAME}.zip"
    with pytest.raises(ValueError, match="could not download") as error:
        torch_bam.create_model("bam_resnet50", pretrained=True, pretrained_cfg_overlay={"url": url})
    assert "file=PATH" in _one_line(error)
    assert list(torch_home.iterdir()) == []


def test_a_missing_user_file_is_one_line(tmp_path, torch_home):
    with pytest.raises(ValueError, match="no such weight file") as error:
        torch_bam.create_model("bam_resnet50", pretrained=True, file=tmp_path / "nope.pth")
    assert str(torch_home / NAME) in _one_line(error)


def test_user_file_pth_or_zip(ptcv_weights, torch_home):
    state_dict, archive, pth, _ = ptcv_weights
    for file in (pth, archive):
        model = torch_bam.create_model("bam_resnet50.ptcv_in1k", pretrained=True, file=file)
        assert _loaded(model, state_dict)
    assert not torch_home.exists()  # a user's file is not copied into the cache


def test_fine_tuning_new_classifier_says_so(ptcv_weights, torch_home, caplog):
    state_dict, _, pth, _ = ptcv_weights
    with caplog.at_level(logging.WARNING, logger="torch_bam"):
        model = torch_bam.create_model("bam_resnet50", pretrained=True, num_classes=10, file=pth)
    assert model.fc.out_features == 10
    assert _loaded(model, state_dict, skip={"fc.weight", "fc.bias"})
    assert not torch.equal(model.fc.weight[:10], state_dict["output.weight"][:10])
    assert any("classifier fc, which is new" in r.getMessage() for r in caplog.records)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_headless_backbone_num_classes_0(ptcv_weights, torch_home, caplog):
    # timm's way to a pretrained backbone: the weights' classifier is dropped, the rest loads.
    state_dict, _, pth, _ = ptcv_weights
    with caplog.at_level(logging.WARNING, logger="torch_bam"):
        model = torch_bam.create_model("bam_resnet50", pretrained=True, num_classes=0, file=pth)
    assert isinstance(model.fc, torch.nn.Identity) and "fc.weight" not in model.state_dict()
    assert _loaded(model, state_dict, skip={"fc.weight", "fc.bias"})
    assert not any("which is new" in r.getMessage() for r in caplog.records)  # nothing new
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


@pytest.mark.parametrize("in_chans", [1, 5])
def test_in_chans_adapted_as_timm_does(ptcv_weights, torch_home, in_chans):
    state_dict, _, pth, _ = ptcv_weights
    model = torch_bam.create_model("bam_resnet50", pretrained=True, in_chans=in_chans, file=pth)
    rgb = state_dict["features.init_block.conv.conv.weight"]
    if in_chans == 1:
        expected = rgb.sum(dim=1, keepdim=True)
    else:
        expected = torch.cat([rgb, rgb], dim=1)[:, :5] * (3 / 5)
    torch.testing.assert_close(model.conv1.weight, expected)
    assert _loaded(model, state_dict, skip={"conv1.weight"})
    # One channel: a grey image gives the first conv what its RGB copy gave the original.
    if in_chans == 1:
        rgb_model = torch_bam.create_model("bam_resnet50", pretrained=True, file=pth).eval()
        grey = torch.randn(1, 1, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(
                model.conv1(grey), rgb_model.conv1(grey.expand(1, 3, 64, 64))
            )


def test_layout_overridden_against_the_weights_is_refused(ptcv_weights, torch_home):
    *_, pth, _ = ptcv_weights
    with pytest.raises(ValueError, match="stride_in_3x3=True"):
        torch_bam.create_model("bam_resnet50", pretrained=True, stride_in_3x3=False, file=pth)
    with pytest.raises(ValueError, match="combine='product'"):
        torch_bam.create_model("bam_resnet50", pretrained=True, combine="sum", file=pth)


def test_timm_and_torch_hub(ptcv_weights, torch_home):
    timm = pytest.importorskip("timm")
    state_dict, archive, pth, sha1 = ptcv_weights
    model = timm.create_model(
        "bam_resnet50.ptcv_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(pth))
    )
    assert _loaded(model, state_dict)
    overlay = dict(url=archive.as_uri(), hash_sha1=sha1)
    model = timm.create_model("bam_resnet50", pretrained=True, pretrained_cfg_overlay=overlay)
    assert _loaded(model, state_dict) and (torch_home / NAME).is_file()
    # torch.hub: the default tag, from the cache just filled (the test file's hash, not the
    # published one, which the cache check would refuse).
    hub = torch.hub.load(
        str(ROOT),
        "bam_resnet50",
        source="local",
        pretrained=True,
        pretrained_cfg_overlay=dict(hash_sha1=sha1),
    )
    assert _loaded(hub, state_dict)
    hub = torch.hub.load(str(ROOT), "bam_resnet50", source="local", tag="official_in1k")
    assert hub.bam1.combine == "product"


def test_official_weights_by_file_or_placed_in_the_cache(tmp_path, torch_home):
    from tests.helpers import randomize_
    from tests.reference.official_resnet import ResidualNet

    official = randomize_(ResidualNet(50), seed=3).eval()
    checkpoint = {"epoch": 90, "state_dict": torch.nn.DataParallel(official).state_dict()}
    expected = convert_official_state_dict(official.state_dict())
    with pytest.raises(ValueError, match="not downloadable") as error:
        torch_bam.create_model("bam_resnet50.official_in1k", pretrained=True)
    assert "dropbox" in _one_line(error) and "RESNET50_IMAGENET_BAM_best.pth.tar" in str(
        error.value
    )

    file = tmp_path / "RESNET50_IMAGENET_BAM_best.pth.tar"
    torch.save(checkpoint, file)
    model = torch_bam.create_model("bam_resnet50.official_in1k", pretrained=True, file=file)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected_out = official(x)  # random BN statistics: logits up to 1e22
        atol = 1e-5 * expected_out.abs().max().item()
        torch.testing.assert_close(model.eval()(x), expected_out, rtol=1e-4, atol=atol)

    torch_home.mkdir(parents=True)
    file.rename(torch_home / file.name)  # placed by hand, where the error said
    model = torch_bam.create_model("bam_resnet50.official_in1k", pretrained=True)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in expected.items())


def test_unknown_tag_and_file_without_pretrained():
    with pytest.raises(ValueError, match="no configuration tagged 'imagenet'.*ptcv_in1k"):
        torch_bam.create_model("bam_resnet50.imagenet")
    with pytest.raises(ValueError, match="pass pretrained=True"):
        torch_bam.create_model("bam_resnet50", file="x.pth")
    with pytest.raises(ValueError, match="unknown fields"):
        torch_bam.create_model("bam_resnet50", pretrained=True, pretrained_cfg_overlay={"x": 1})


def test_readme_pretrained_snippet_runs(ptcv_weights, torch_home, monkeypatch, capsys):
    """<!-- test: readme pretrained --> runs as written; the registered address and hash point
    at the test's stand-in for pytorchcv's archive (random weights, zipped as published)."""
    from dataclasses import replace

    from tests.docs.markdown_blocks import block_after
    from torch_bam.models import _cfg

    state_dict, archive, _, sha1 = ptcv_weights
    served = replace(PTCV, url=archive.as_uri(), hash_sha1=sha1)
    monkeypatch.setitem(_cfg._CFGS["bam_resnet50"], "ptcv_in1k", served)
    scope: dict = {}
    exec(block_after("<!-- test: readme pretrained"), scope)
    assert capsys.readouterr().out.strip() == "torch.Size([1, 1000])"
    assert _loaded(scope["model"], state_dict) and (torch_home / NAME).is_file()
    assert scope["cfg"]["mean"] == (0.485, 0.456, 0.406)
