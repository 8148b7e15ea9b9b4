"""Image reading across PIL modes, unreadable files, and the square-fitting modes' pixel maps."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from gangealing_jax.data.image_io import (
    PAD_MODES,
    ImageReadError,
    crop_box_and_resize,
    load_rgb,
    pad_and_resize,
    resize_shorter_side,
)


def write_png_rgb16(path, pixels):
    """A 48-bit RGB PNG written by hand (PIL cannot create one from an array)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[r].astype(">u2").tobytes() for r in range(height))

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    with open(path, "wb") as f:
        f.write(png + chunk(b"IEND", b""))


def write_exif_rotated_jpeg(path, orientation=6):
    """24 x 40 (H x W) image, left half red, right half blue, tagged to be shown rotated."""
    pixels = np.zeros((24, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif.tobytes())


def write_truncated_jpeg(path, rng):
    full = path.with_suffix(".full.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, quality=90)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])


def test_grayscale_and_bilevel(tmp_path):
    gray = np.arange(60, dtype=np.uint8).reshape(5, 12) * 4
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = load_rgb(str(tmp_path / "g.png"))
    assert out.shape == (5, 12, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))
    Image.new("1", (7, 3), 1).save(tmp_path / "b.png")
    np.testing.assert_array_equal(load_rgb(str(tmp_path / "b.png")), np.full((3, 7, 3), 255))


def test_transparency_is_composited_over_the_background(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (0, 100, 200)
    rgba[..., 3] = [[0, 255, 128], [0, 0, 0]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    white = load_rgb(str(tmp_path / "a.png"))
    np.testing.assert_array_equal(white[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(white[0, 1], [0, 100, 200])
    np.testing.assert_allclose(white[0, 2], [127, 177, 227], atol=1)  # half-way blend
    black = load_rgb(str(tmp_path / "a.png"), background=(0, 0, 0))
    np.testing.assert_array_equal(black[0, 0], [0, 0, 0])
    Image.new("LA", (4, 2), (90, 0)).save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_rgb(str(tmp_path / "la.png")), np.full((2, 4, 3), 255))
    palette = Image.new("P", (3, 2), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "p.png", transparency=0)
    out = load_rgb(str(tmp_path / "p.png"))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[1, 2], [0, 0, 255])


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    out = load_rgb(str(tmp_path / "c.jpg"))
    assert out.shape == (6, 8, 3)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [255, 0, 0], atol=6)


def test_high_bit_depth_is_rescaled_not_truncated(tmp_path):
    levels = np.array([[0, 257 * 100, 65535, 200, 32767]], np.uint16)
    expected = np.array([0, 100, 255, 1, 127])  # rounded v / 257, not v >> 8 nor clipping
    Image.fromarray(levels).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    np.testing.assert_array_equal(load_rgb(str(tmp_path / "g16.png"))[0, :, 0], expected)
    Image.frombytes("I;16B", (5, 1), levels.astype(">u2").tobytes()).save(tmp_path / "b.tif")
    np.testing.assert_array_equal(load_rgb(str(tmp_path / "b.tif"))[0, :, 1], expected)
    Image.fromarray(levels.astype(np.int32)).save(tmp_path / "i.tif")
    np.testing.assert_array_equal(load_rgb(str(tmp_path / "i.tif"))[0, :, 2], expected)
    Image.fromarray((levels / 65535.0).astype(np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_rgb(str(tmp_path / "f.tif"))[0, :, 0], expected)
    rgb16 = np.array([[[65535, 0, 257 * 200], [257 * 10, 65535, 0]]], np.uint16)
    write_png_rgb16(tmp_path / "rgb16.png", rgb16)
    np.testing.assert_allclose(load_rgb(str(tmp_path / "rgb16.png")), rgb16 / 257, atol=1)


def test_exif_orientation_is_applied(tmp_path):
    write_exif_rotated_jpeg(tmp_path / "r.jpg", orientation=6)  # shown rotated 90 deg clockwise
    out = load_rgb(str(tmp_path / "r.jpg")).astype(int)
    assert out.shape == (40, 24, 3)
    assert out[:16, :, 0].mean() > 200 and out[:16, :, 2].mean() < 50  # red, formerly left
    assert out[24:, :, 2].mean() > 200 and out[24:, :, 0].mean() < 50  # blue, formerly right
    raw = load_rgb(str(tmp_path / "r.jpg"), apply_exif_orientation=False)
    assert raw.shape == (24, 40, 3)


def test_unreadable_files_name_the_file(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "junk.jpg").write_bytes(rng.integers(0, 255, 300, dtype=np.uint8).tobytes())
    write_truncated_jpeg(tmp_path / "cut.jpg", rng)
    (tmp_path / "notes.png").write_text("not an image")
    for name in ("junk.jpg", "cut.jpg", "notes.png", "missing.png"):
        with pytest.raises(ImageReadError) as info:
            load_rgb(str(tmp_path / name))
        assert isinstance(info.value, ValueError)
        assert str(tmp_path / name) in str(info.value) and "remove it" in str(info.value)
        assert info.value.path == str(tmp_path / name)
    with pytest.raises(ImageReadError, match="truncated"):
        load_rgb(str(tmp_path / "cut.jpg"))


@pytest.fixture
def noise():
    return np.random.default_rng(1).integers(0, 255, (20, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("transpose", [False, True], ids=["wide", "tall"])
def test_unresampled_modes_move_pixels_exactly(noise, transpose):
    image = noise.transpose(1, 0, 2) if transpose else noise
    point = np.array([7.0, 21.0]) if transpose else np.array([21.0, 7.0])  # (x, y)
    value = image[int(point[1]), int(point[0])]
    for mode, size in (("center", 20), ("resize_small_side", 20), ("border", 32), ("zero", 32)):
        out = pad_and_resize(image, size, mode)
        assert out.image.shape == (size, size, 3) and out.scale == 1.0
        x, y = out.map_points(point)
        np.testing.assert_array_equal(out.image[int(y), int(x)], value, err_msg=mode)
    border = pad_and_resize(image, 32, "border").image
    zero = pad_and_resize(image, 32, "zero").image
    first = (lambda a: a[:, 0]) if transpose else (lambda a: a[0])
    np.testing.assert_array_equal(first(border), first(image))  # edge pixels repeated
    assert first(zero).max() == 0


def _blob_image(height, width, x, y):
    rows, cols = np.mgrid[:height, :width]
    blob = 255 * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * 2.5**2))
    return np.repeat(blob[..., None], 3, -1).round().astype(np.uint8)


def _centroid(image):
    mass = image[..., 0].astype(np.float64)
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    return np.array([(cols * mass).sum(), (rows * mass).sum()]) / mass.sum()


@pytest.mark.parametrize("mode", PAD_MODES)
@pytest.mark.parametrize("shape", [(40, 64), (64, 40)], ids=["wide", "tall"])
def test_resampled_modes_map_keypoints(mode, shape):
    height, width = shape
    x, y = width * 0.45, height * 0.55
    out = pad_and_resize(_blob_image(height, width, x, y), 48, mode)
    assert out.image.shape == (48, 48, 3) and out.image.dtype == np.uint8
    mapped = out.map_points([x, y])
    # The reference maps points with new = old * scale + offset; resampling treats pixel centres,
    # which moves content by 0.5 * (scale - 1) more. Both are within this bound.
    bound = 0.5 * abs(max(out.scale_x, out.scale_y) - 1) + 0.25
    np.testing.assert_allclose(mapped, _centroid(out.image), atol=bound, err_msg=mode)


def test_none_mode_is_anisotropic_and_says_so(noise):
    out = pad_and_resize(noise, 16, "none")
    assert (out.scale_x, out.scale_y) == (16 / 32, 16 / 20)
    with pytest.raises(ValueError, match="anisotropic"):
        _ = out.scale
    with pytest.raises(ValueError, match="pad mode"):
        pad_and_resize(noise, 16, "stretch")


def test_resize_shorter_side_keeps_the_aspect_ratio(noise):
    out = resize_shorter_side(noise, 10)
    assert out.image.shape == (10, 16, 3) and out.scale == 0.5


def test_box_crop_repeats_edges_outside_the_image(noise):
    out = crop_box_and_resize(noise, (-4, 2, 11, 17), 16)  # 16 x 16 box, 4 columns outside
    assert out.scale == 1.0
    np.testing.assert_array_equal(out.image[:, 4:], noise[2:18, 0:12])
    np.testing.assert_array_equal(out.image[:, 0], noise[2:18, 0])
    np.testing.assert_allclose(out.map_points([0.0, 2.0]), [4.0, 0.0])
    with pytest.raises(ValueError, match="square"):
        crop_box_and_resize(noise, (0, 0, 5, 9), 16)
