"""open_image: any image file as 8-bit L or RGB, deep pixels scaled by their bit depth."""

import numpy as np
import pytest
from PIL import Image

from torch_bam.data.images import load_rgb, open_image

# 16-bit levels and the 8-bit levels they must become: v / 65535 * 255, rounded.
LEVELS_16 = [0, 16384, 32768, 65535]
LEVELS_8 = [0, 64, 128, 255]


def _png_16(path, levels=LEVELS_16):
    a = np.array([levels] * 3, dtype=np.uint16)  # 3 rows, one column per level
    Image.fromarray(a).save(path)  # a uint16 array is PIL mode "I;16": a 16-bit grey PNG
    with Image.open(path) as im:
        assert im.mode == "I;16"
    return path


def test_16_bit_png_is_scaled_not_saturated_by_the_imagefolder_loader(tmp_path):
    rgb = np.asarray(load_rgb(str(_png_16(tmp_path / "g16.png"))))
    assert rgb.shape == (3, 4, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], LEVELS_8)
    assert (rgb == rgb[..., :1]).all()  # grey in all three channels


@pytest.mark.parametrize(
    ("mode", "values", "suffix"),
    [
        ("I;16", np.array(LEVELS_16, np.uint16), "png"),
        ("I;16B", np.array(LEVELS_16, ">u2"), "tif"),
        # PIL's "I" is signed 32-bit: full scale is 2**31 - 1.
        ("I", np.round(np.array(LEVELS_16) / 65535 * (2**31 - 1)).astype(np.int32), "tif"),
        ("F", np.array(LEVELS_16, np.float32) / 65535, "tif"),  # float: 0 to 1
    ],
)
def test_each_deep_mode_is_scaled_by_its_depth(tmp_path, mode, values, suffix):
    data = np.stack([values] * 2).astype(values.dtype)  # stack drops the byte order
    im = Image.frombytes(mode, (data.shape[1], data.shape[0]), data.tobytes())
    path = tmp_path / f"x.{suffix}"
    im.save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    grey = np.asarray(open_image(path, "L"))
    assert grey.dtype == np.uint8
    np.testing.assert_array_equal(grey[0], LEVELS_8)
    np.testing.assert_array_equal(np.asarray(open_image(path, "RGB"))[..., 1], grey)


def test_8_bit_images_are_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "c.png")
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "c.png", "RGB")), a)
    Image.fromarray(a[..., 0]).save(tmp_path / "g.png")
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "g.png", "L")), a[..., 0])


def test_bad_files_raise_oserror(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    whole = _png_16(tmp_path / "whole.png", list(range(0, 65536, 257)) * 4)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for path in (text, empty, truncated, tmp_path / "missing.png"):
        with pytest.raises(OSError):
            open_image(path, "RGB")
    with pytest.raises(ValueError, match="mode must be 'L' or 'RGB'"):
        open_image(whole, "CMYK")
