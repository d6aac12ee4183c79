"""Data modules: one class index for every split, a real test split, workers within the cores."""

import os

import pytest
import torch
from PIL import Image

from torch_bam.data import ClutteredDigitsDataModule, ImageFolderDataModule
from torch_bam.errors import UsageError


def _folder(root, split, classes, n=1):
    for c in classes:
        d = root / split / c
        d.mkdir(parents=True)
        for i in range(n):
            img = torch.randint(0, 255, (8, 8, 3), dtype=torch.uint8).numpy()
            Image.fromarray(img).save(d / f"{i}.png")


def _dm(root, **kwargs):
    return ImageFolderDataModule(root=str(root), image_size=8, resize_size=8, **kwargs)


def test_splits_share_the_class_index_and_a_missing_class_is_named(tmp_path):
    _folder(tmp_path, "train", "abc")
    _folder(tmp_path, "val", "ac")
    dm = _dm(tmp_path)
    with pytest.warns(UserWarning, match=r"val.*no images of class 'b'"):
        dm.setup("fit")
    assert dm.train_set.class_to_idx == dm.val_set.class_to_idx == {"a": 0, "b": 1, "c": 2}
    labels = {dm.val_set.classes[y]: y for _, y in dm.val_set.samples}
    assert labels == {"a": 0, "c": 2}  # `c` is 2 in val too, not 1


def test_class_only_in_val_is_an_error(tmp_path):
    _folder(tmp_path, "train", "ab")
    _folder(tmp_path, "val", "abd")
    with pytest.raises(UsageError, match=r"'d'.*not in .*train"):
        _dm(tmp_path).setup("fit")


def test_empty_folder_is_a_usage_error(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(UsageError, match="no class folders"):
        _ = _dm(tmp_path).num_classes


def test_test_split_is_test_folder_when_there_is_one(tmp_path):
    _folder(tmp_path, "train", "ab")
    _folder(tmp_path, "val", "ab")
    dm = _dm(tmp_path)
    dm.setup("test")
    assert dm.test_split == "val"  # no test/: the validation images, and it says so
    _folder(tmp_path, "test", "ab", n=2)
    dm = _dm(tmp_path)
    dm.setup("test")
    assert dm.test_split == "test"
    assert len(dm.test_dataloader().dataset) == 4
    assert dm.test_set.class_to_idx == dm.train_set.class_to_idx


def test_digits_test_split_differs_from_validation():
    dm = ClutteredDigitsDataModule(num_train=16, num_val=8, num_test=8, canvas_size=24, scale=2)
    dm.setup("test")
    assert len(dm.test_set) == 8
    assert not torch.equal(dm.test_set.images, dm.val_set.images)


def test_digits_splits_share_no_source_digit():
    # A test image of a digit seen in validation (moved, other clutter) is not an unseen digit.
    dm = ClutteredDigitsDataModule(num_train=64, num_val=64, num_test=64, canvas_size=24, scale=2)
    dm.setup("fit")
    train, val, test = (set(d.sources.tolist()) for d in (dm.train_set, dm.val_set, dm.test_set))
    assert not (train & val) and not (train & test) and not (val & test)


def test_workers_are_capped_at_the_available_cores():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    dm = ImageFolderDataModule(num_workers=cores + 64)
    assert dm.num_workers == cores
    assert ImageFolderDataModule(num_workers=0).num_workers == 0
