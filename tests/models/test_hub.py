"""Model folders as timm shares them (config.json + model.safetensors): save_pretrained, then
loading back with torch_bam.create_model and timm.create_model ("local-dir:" and "hf-hub:").
Nothing goes to the network: the Hub client is pointed at a local folder."""

import json
import os

import pytest
import torch

import torch_bam
from torch_bam.errors import UsageError

safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = torch_bam.create_model("bam_small_cnn", num_classes=5, in_chans=1, combine="product")
    with torch.no_grad():  # BatchNorm statistics other than the defaults: they must travel too
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture
def x():
    return torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def _same(a, b, x):
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_folder_layout_is_timms(model, tmp_path):
    folder = torch_bam.save_pretrained(
        model, tmp_path / "m", pretrained_cfg={"mean": [0.1], "std": [0.3]}
    )
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "bam_small_cnn"
    assert config["num_classes"] == 5 and config["num_features"] == 128
    assert config["model_args"] == {"in_chans": 1, "combine": "product"}
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [1, 32, 32] and pcfg["mean"] == [0.1] and pcfg["std"] == [0.3]
    assert pcfg["num_classes"] == 5 and pcfg["first_conv"] == "stages.0.0"
    assert not {"url", "file", "converter", "hash_sha1"} & set(pcfg)
    weights = safetensors_torch.load_file(str(folder / "model.safetensors"))
    own = model.state_dict()
    assert weights.keys() == own.keys() and all(torch.equal(weights[k], own[k]) for k in own)


def test_create_model_local_dir_round_trip(model, x, tmp_path):
    folder = torch_bam.save_pretrained(model, tmp_path / "m")
    loaded = torch_bam.create_model(f"local-dir:{folder}", pretrained=True)
    assert loaded.bams[0].combine == "product" and loaded.num_classes == 5
    assert _same(model, loaded, x)
    assert loaded.pretrained_cfg["input_size"] == (1, 32, 32)
    # As timm: without pretrained=True the folder's network, freshly initialised.
    fresh = torch_bam.create_model(f"local-dir:{folder}")
    assert fresh.bams[0].combine == "product" and not _same(model, fresh, x)
    # Another number of classes: a new classifier, every other weight loaded.
    tuned = torch_bam.create_model(f"local-dir:{folder}", pretrained=True, num_classes=3)
    assert tuned.num_classes == 3
    assert torch.equal(tuned.stages[0][0].weight, model.stages[0][0].weight)
    # Other input channels: the first conv's filters adapted as timm adapts them.
    from torch_bam.models._pretrained import adapt_input_conv

    rgb = torch_bam.create_model(f"local-dir:{folder}", pretrained=True, in_chans=3)
    first = model.stages[0][0].weight
    assert torch.equal(rgb.stages[0][0].weight, adapt_input_conv(3, first, base_chans=1))
    assert rgb.pretrained_cfg["input_size"] == (3, 32, 32)
    feats = torch_bam.create_model(f"local-dir:{folder}", pretrained=True, features_only=True)
    assert len(feats(x)) == len(feats.feature_info)


def test_timm_local_dir_round_trip(model, x, tmp_path):
    timm = pytest.importorskip("timm")
    folder = torch_bam.save_pretrained(model, tmp_path / "m")
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert _same(model, loaded, x)
    config = timm.data.resolve_data_config({}, model=loaded)
    assert config["input_size"] == (1, 32, 32)
    # timm's own reader takes our weights file as it is.
    from timm.models._hub import load_state_dict_from_path

    state = load_state_dict_from_path(folder)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_baseline_is_saved_under_its_timm_name(x, tmp_path):
    timm = pytest.importorskip("timm")
    net = torch_bam.create_model("small_cnn", num_classes=4, in_chans=1).eval()
    folder = torch_bam.save_pretrained(net, tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["architecture"] == "torch_bam_small_cnn"
    assert _same(net, torch_bam.create_model(f"local-dir:{folder}", pretrained=True), x)
    assert _same(net, timm.create_model(f"local-dir:{folder}", pretrained=True), x)


def test_hf_hub_names_load_through_the_hub_client(model, x, tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    torch_bam.save_pretrained(model, tmp_path / "org" / "bam-small")
    asked = []

    def local_download(repo_id, filename, revision=None, **kwargs):
        asked.append((repo_id, filename, revision))
        path = tmp_path / repo_id / filename
        if not path.is_file():
            raise huggingface_hub.errors.EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", local_download)
    loaded = torch_bam.create_model("hf-hub:org/bam-small@v1", pretrained=True)
    assert _same(model, loaded, x)
    assert ("org/bam-small", "config.json", "v1") in asked
    assert loaded.pretrained_cfg["hf_hub_id"] == "org/bam-small@v1"
    timm = pytest.importorskip("timm")
    import timm.models._hub as timm_hub

    monkeypatch.setattr(timm_hub, "hf_hub_download", local_download)
    assert _same(model, timm.create_model("hf-hub:org/bam-small", pretrained=True), x)


def test_write_is_whole_or_nothing(model, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors_torch, "save_file", full_disk)
    with pytest.raises(OSError):
        torch_bam.save_pretrained(model, tmp_path / "new" / "m")
    assert os.listdir(tmp_path) == []  # no folder, no temporary one


def test_replaces_a_model_folder_but_not_other_files(model, x, tmp_path):
    folder = torch_bam.save_pretrained(torch_bam.create_model("bam_small_cnn"), tmp_path / "m")
    torch_bam.save_pretrained(model, folder)  # a model folder: replaced whole
    assert _same(model, torch_bam.create_model(f"local-dir:{folder}", pretrained=True), x)
    assert sorted(os.listdir(tmp_path)) == ["m"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds other files"):
        torch_bam.save_pretrained(model, other)
    assert os.listdir(other) == ["todo.txt"]


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="no config.json") as e:
        torch_bam.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="create_model"):
        torch_bam.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "m")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet_nope"}))
    with pytest.raises(UsageError, match="not a torch_bam model"):
        torch_bam.create_model(f"local-dir:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "bam_small_cnn"}))
    with pytest.raises(UsageError, match="holds no weights"):
        torch_bam.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert not (tmp_path / "m").exists()
