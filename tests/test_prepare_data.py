"""prepare_data on a messy folder, a video, and small synthetic SPair-71K and CUB-200-2011 trees."""

import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from gangealing_jax import prepare_data
from gangealing_jax.data import sources
from gangealing_jax.data.image_io import load_rgb, pad_and_resize
from gangealing_jax.data.prepared import PreparedDataset
from tests.test_image_io import write_exif_rotated_jpeg, write_png_rgb16, write_truncated_jpeg


def _run(capsys, *args):
    try:
        code = prepare_data.main([*map(str, args), "--no-progress"])
    except SystemExit as exit_:  # an expected error: one line on stderr, status 2
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _noise(rng, height, width):
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def messy_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "junk.jpg").write_bytes(rng.integers(0, 255, 400, dtype=np.uint8).tobytes())
    write_truncated_jpeg(root / "cut.jpg", rng)
    Image.fromarray(_noise(rng, 20, 30)[..., 0]).save(root / "gray.png")
    Image.fromarray(rng.integers(0, 255, (25, 25, 4), dtype=np.uint8), "RGBA").save(root / "a.png")
    Image.new("CMYK", (18, 12), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    Image.fromarray((np.arange(300).reshape(15, 20) * 200).astype(np.uint16)).save(root / "g16.png")
    write_png_rgb16(root / "rgb16.png", (np.ones((9, 14, 3)) * 40000).astype(np.uint16))
    write_exif_rotated_jpeg(root / "rotated.jpg")
    Image.fromarray(_noise(rng, 50, 20)).save(root / "tall.bmp")
    Image.fromarray(_noise(rng, 11, 31)).save(root / "sub" / "deep.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_messy_folder_prepares_and_reports_what_it_skipped(messy_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = _run(
        capsys, "--input", messy_folder, "--out", out, "--size", 16, "--chunk", 3, "--workers", 2
    )
    assert code == 0
    good = ["a.png", "cmyk.jpg", "g16.png", "gray.png", "rgb16.png", "rotated.jpg", "tall.bmp"]
    dataset = PreparedDataset(str(out))
    assert len(dataset) == len(good) and dataset.images.shape == (7, 16, 16, 3)
    assert json.loads((out / "items.json").read_text()) == good
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped["total"] == 9 and skipped["unit"] == "files"
    assert [s["name"] for s in skipped["skipped"]] == ["cut.jpg", "junk.jpg"]
    assert "truncated" in skipped["skipped"][0]["reason"]
    assert "skipped 2 of 9 files: cut.jpg (image file is truncated" in stdout
    assert "junk.jpg (not an image" in stdout and f"{out}/skipped.json" in stdout
    assert "not image files (sub-folders are read with --recursive): notes.txt, sub/" in stdout
    assert dataset.keypoints.shape == (7, 0, 3) and dataset.pairs.shape == (0, 2)
    assert dataset.meta["flip_permutation"] == [] and dataset.meta["pad"] == "center"
    np.testing.assert_array_equal(dataset.bboxes, np.tile([0, 0, 15, 15], (7, 1)))
    expected = pad_and_resize(load_rgb(str(messy_folder / "tall.bmp")), 16, "center").image
    np.testing.assert_array_equal(dataset[good.index("tall.bmp")].image, expected)
    rotated = dataset[good.index("rotated.jpg")].image.astype(int)  # shown upright: red on top
    assert rotated[2, :, 0].mean() > 200 and rotated[2, :, 2].mean() < 60
    assert rotated[13, :, 2].mean() > 200 and rotated[13, :, 0].mean() < 60
    assert not os.path.exists(out / ".images.staging")
    code, _, stderr = _run(capsys, "--input", messy_folder, "--out", out, "--size", 16)
    assert code == 2 and "already holds" in stderr


def test_recursive_and_limits(messy_folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ("--input", messy_folder, "--out", out, "--size", 8, "--recursive", "--pad", "zero")
    assert _run(capsys, *args, "--max_items", 4)[0] == 0
    items = json.loads((out / "items.json").read_text())
    assert items == ["a.png", "cmyk.jpg", "g16.png"]  # the 4 inputs include cut.jpg, skipped
    out2 = tmp_path / "out2"
    assert _run(capsys, "--input", messy_folder, "--out", out2, "--size", 8, "--recursive")[0] == 0
    assert "sub/deep.png" in json.loads((out2 / "items.json").read_text())


def test_nothing_readable_is_an_error_with_the_list(tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    (root / "bad.png").write_bytes(b"\x89PNG not really")
    code, _, stderr = _run(capsys, "--input", root, "--out", tmp_path / "out", "--size", 8)
    assert code == 2 and "skipped 1 of 1 files: bad.png" in stderr
    assert json.loads((tmp_path / "out" / "skipped.json").read_text())["skipped"][0]["name"]
    assert not os.path.exists(tmp_path / "out" / "meta.json")


def test_video_frames(tmp_path, capsys):
    frames = np.stack([np.full((12, 20, 3), 40 * i, np.uint8) for i in range(5)])
    Image.fromarray(frames[0]).save(
        tmp_path / "clip.gif", save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]]
    )
    out = tmp_path / "out"
    assert _run(capsys, "--input", tmp_path / "clip.gif", "--out", out, "--size", 8,
                "--frame_step", 2)[0] == 0  # fmt: skip
    dataset = PreparedDataset(str(out))
    assert len(dataset) == 3 and dataset.meta["source"] == "video"
    np.testing.assert_allclose(dataset.images.mean(axis=(1, 2, 3)), [0, 80, 160], atol=3)
    assert json.loads((out / "items.json").read_text())[1] == "frame 000002"


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) for m in ("imageio_ffmpeg", "av")),
    reason="a video backend is installed here",
)
def test_missing_video_backend_says_what_to_install(tmp_path, capsys):
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    code, _, stderr = _run(capsys, "--input", tmp_path / "clip.mp4", "--out", tmp_path / "o")
    assert code == 2 and "pip install imageio[ffmpeg]" in stderr


def _spair_pair(root, name, category, src, trg, ids, src_kps, trg_kps, src_box, trg_box):
    record = {
        "category": category, "mirror": 0, "kps_ids": [str(i) for i in ids],
        "src_imname": src[0], "trg_imname": trg[0],
        "src_imsize": [src[1], src[2], 3], "trg_imsize": [trg[1], trg[2], 3],
        "src_kps": src_kps, "trg_kps": trg_kps, "src_bndbox": src_box, "trg_bndbox": trg_box,
    }  # fmt: skip
    (root / "PairAnnotation" / "test" / f"{name}:{category}.json").write_text(json.dumps(record))


def test_spair_tree(tmp_path, capsys):
    rng = np.random.default_rng(2)
    root = tmp_path / "SPair-71k"
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    (root / "JPEGImages" / "cat").mkdir(parents=True)
    for name, (w, h) in {"c1.jpg": (40, 20), "c2.jpg": (20, 30), "c3.jpg": (16, 16)}.items():
        Image.fromarray(_noise(rng, h, w)).save(root / "JPEGImages" / "cat" / name)
    write_truncated_jpeg(root / "JPEGImages" / "cat" / "broken.jpg", rng)
    c1, c2, c3 = ("c1.jpg", 40, 20), ("c2.jpg", 20, 30), ("c3.jpg", 16, 16)
    _spair_pair(root, "000001-c1-c2", "cat", c1, c2, [0, 3, 7], [[1, 2], [10, 5], [39, 19]],
                [[4, 4], [5, 25], [19, 0]], [0, 1, 30, 18], [2, 3, 19, 29])  # fmt: skip
    _spair_pair(root, "000002-c1-broken", "cat", c1, ("broken.jpg", 64, 64), [1], [[3, 3]],
                [[5, 5]], [0, 0, 9, 9], [0, 0, 9, 9])  # fmt: skip
    _spair_pair(root, "000003-c3-c1", "cat", c3, c1, [14], [[8, 8]], [[20, 10]],
                [0, 0, 15, 15], [1, 1, 2, 2])  # fmt: skip
    _spair_pair(root, "000004-d1-d2", "dog", c1, c2, [0], [[1, 1]], [[1, 1]], [0, 0, 1, 1],
                [0, 0, 1, 1])  # fmt: skip
    out = tmp_path / "out"
    args = ("--format", "spair", "--input", root, "--spair_category", "cat", "--size", 32)
    code, stdout, _ = _run(capsys, *args, "--out", out)
    assert code == 0
    assert (
        "skipped 1 of 3 pairs: 000002-c1-broken:cat (broken.jpg: image file is truncated" in stdout
    )
    dataset = PreparedDataset(str(out))
    assert len(dataset) == 4 and dataset.pairs.tolist() == [[0, 1], [2, 3]]
    assert dataset.meta["pad"] == "border" and dataset.meta["spair_category"] == "cat"
    assert dataset.flip_permutation.tolist() == list(sources.SPAIR_FLIP_PERMUTATIONS["cat"])
    assert dataset.keypoints.shape == (4, 15, 3)
    # c1 (40 x 20) at size 32: scale 0.8, 16 rows tall, 8 rows of padding above.
    src = dataset.keypoints[0]
    np.testing.assert_allclose(src[[0, 3, 7]], [[0.8, 9.6, 1], [8, 12, 1], [31.2, 23.2, 1]])
    assert np.all(np.delete(src, [0, 3, 7], axis=0) == 0)
    np.testing.assert_allclose(dataset.bboxes[0], [0, 8.8, 24, 22.4], rtol=1e-6)
    # c2 (20 x 30): scale 32 / 30, width round(21.33) = 21, 5 columns of padding on the left.
    s = 32 / 30
    np.testing.assert_allclose(dataset.keypoints[1, 3], [5 * s + 5, 25 * s, 1], rtol=1e-6)
    np.testing.assert_allclose(dataset.keypoints[3, 14], [16, 16, 1], rtol=1e-6)
    transforms = np.load(out / "transforms.npy")
    np.testing.assert_allclose(transforms[0], [0.8, 0.8, 0, 8])
    code, _, stderr = _run(capsys, *args, "--out", tmp_path / "o2", "--pad", "center")
    assert code == 2 and "border" in stderr


CUB_IMAGES = {1: ("001.Gull/g1.jpg", 60, 40, 1), 2: ("001.Gull/g2.jpg", 30, 50, 0),
              3: ("002.Wren/w1.jpg", 44, 44, 0), 4: ("002.Wren/bad.jpg", 20, 20, 0)}  # fmt: skip
CUB_BOXES = {1: (5, 6, 30, 20), 2: (3.0, 10.0, 20.0, 30.0), 3: (0.0, 0.0, 44.0, 44.0),
             4: (1, 1, 5, 5)}  # (x, y, w, h) in the 1-based frame of the part locations  # fmt: skip


@pytest.fixture
def cub_root(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "CUB_200_2011"
    for image_id, (rel, w, h, _) in CUB_IMAGES.items():
        (root / "images" / os.path.dirname(rel)).mkdir(parents=True, exist_ok=True)
        if image_id == 4:
            (root / "images" / rel).write_bytes(b"\xff\xd8\xff\xe0 broken")
        else:
            Image.fromarray(_noise(rng, h, w)).save(root / "images" / rel, quality=95)
    (root / "parts").mkdir()
    lines = (f"{i} {rel}" for i, (rel, *_) in CUB_IMAGES.items())
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    split = (f"{i} {train}" for i, (_, _, _, train) in CUB_IMAGES.items())
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    boxes = (f"{i} {' '.join(map(str, b))}" for i, b in CUB_BOXES.items())
    (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    part_lines = []
    for image_id in CUB_IMAGES:
        for part in range(1, 16):
            visible = int(part % 3 != 0)
            x, y = (10.0 + part, 12.0 + image_id) if visible else (0.0, 0.0)
            part_lines.append(f"{image_id} {part} {x} {y} {visible}")
    (root / "parts" / "part_locs.txt").write_text("\n".join(part_lines) + "\n")
    return root


def test_acsm_square_box_rounds_halves_away_from_zero():
    # tight (10, 20, 39, 29): 5% pads of 1.5 and 0.5 give (8.5, 19.5, 40.5, 29.5) -> (9, 20, 41,
    # 30), 33 x 11, grown to 33 x 33 by 11 rows above and below.
    np.testing.assert_array_equal(sources.acsm_square_box([10, 20, 39, 29]), [9, 9, 41, 41])
    # (-0.5, -0.5, 9.5, 9.5) rounds to (-1, -1, 10, 10), not (0, 0, 10, 10).
    np.testing.assert_array_equal(sources.acsm_square_box([0, 0, 9, 9]), [-1, -1, 10, 10])


def _check_cub(dataset, root, image_id, index, size):
    x, y, w, h = CUB_BOXES[image_id]
    tight = np.array([x - 1, y - 1, x + w - 2, y + h - 2])
    box = sources.acsm_square_box(tight)
    scale = size / (box[2] - box[0] + 1)
    part = np.arange(1, 16)
    visible = (part % 3 != 0).astype(np.float32)
    # The reference: (part location - (box left + 1)) * size / box side, zeroed when hidden.
    expected_x = (10.0 + part - (box[0] + 1)) * scale * visible
    expected_y = (12.0 + image_id - (box[1] + 1)) * scale * visible
    np.testing.assert_allclose(dataset.keypoints[index, :, 0], expected_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dataset.keypoints[index, :, 1], expected_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(dataset.keypoints[index, :, 2], visible)
    np.testing.assert_allclose(
        dataset.bboxes[index], (tight - np.tile(box[:2], 2)) * scale, rtol=1e-5, atol=1e-5
    )
    image = load_rgb(str(root / "images" / CUB_IMAGES[image_id][0]))
    rows = np.clip(np.arange(box[1], box[3] + 1), 0, image.shape[0] - 1)
    cols = np.clip(np.arange(box[0], box[2] + 1), 0, image.shape[1] - 1)
    crop = Image.fromarray(np.ascontiguousarray(image[rows][:, cols]))
    expected = np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(dataset.images[index], expected)


def test_cub_tree_with_cub_split(cub_root, tmp_path, capsys):
    out = tmp_path / "out"
    args = ("--format", "cub", "--input", cub_root, "--cub_split", "test", "--size", 24)
    code, stdout, _ = _run(capsys, *args, "--out", out)
    assert code == 0 and "skipped 1 of 3 images: 002.Wren/bad.jpg (" in stdout
    dataset = PreparedDataset(str(out))
    assert len(dataset) == 2 and dataset.pairs.shape == (0, 2)
    assert dataset.flip_permutation.tolist() == list(sources.CUB_FLIP_PERMUTATION)
    assert dataset.keypoint_names == list(sources.CUB_PART_NAMES)
    _check_cub(dataset, cub_root, 2, 0, 24)
    _check_cub(dataset, cub_root, 3, 1, 24)
    code, _, stderr = _run(capsys, *args, "--out", tmp_path / "o2", "--pad", "zero")
    assert code == 2 and "ACSM" in stderr


def test_cub_tree_with_acsm_mat(cub_root, tmp_path, capsys):
    scipy_io = pytest.importorskip("scipy.io")
    ids = [3, 1]  # ACSM's file lists its own subset and order
    box_type = [(k, "O") for k in ("x1", "y1", "x2", "y2")]
    images = np.zeros((1, len(ids)), dtype=[("rel_path", "O"), ("id", "O"), ("bbox", "O")])
    for column, image_id in enumerate(ids):
        x, y, w, h = CUB_BOXES[image_id]
        box = np.zeros((1, 1), dtype=box_type)
        for key, value in zip(("x1", "y1", "x2", "y2"), (x, y, x + w - 1, y + h - 1), strict=True):
            box[0, 0][key] = np.array([[value]], np.float64)
        images[0, column] = (np.array([CUB_IMAGES[image_id][0]]), np.array([[image_id]]), box)
    scipy_io.savemat(tmp_path / "val_cub_cleaned.mat", {"images": images})
    records = sources.read_acsm_split(str(tmp_path / "val_cub_cleaned.mat"))
    assert [r.image_id for r in records] == ids
    np.testing.assert_allclose(records[1].bbox, [4, 5, 33, 24])  # 1-based corners minus 1
    out = tmp_path / "out"
    code, _, _ = _run(capsys, "--format", "cub", "--input", cub_root, "--size", 20, "--out", out)
    assert code == 0  # found val_cub_cleaned.mat in the parent of --input
    dataset = PreparedDataset(str(out))
    assert json.loads((out / "items.json").read_text()) == [CUB_IMAGES[i][0] for i in ids]
    _check_cub(dataset, cub_root, 3, 0, 20)
    _check_cub(dataset, cub_root, 1, 1, 20)


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height but whose pixel data is one tiny chunk: opening
    it reads the size, decoding it fails (so a refusal by size proves nothing was decoded)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat))


def test_bad_flags_and_used_out_folders_are_refused_before_any_image_is_read(tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a.png")
    out = tmp_path / "out"
    for size in (0, -3):
        code, _, stderr = _run(capsys, "--input", root, "--out", out, "--size", size)
        assert code == 2 and stderr == f"error: --size {size}: must be >= 1, e.g. --size 256\n"
    assert not out.exists()
    out.mkdir()
    (out / "items.json").write_text("the user's own notes")
    (out / "keep.txt").write_text("mine")
    code, _, stderr = _run(capsys, "--input", root, "--out", out, "--size", 8)
    assert code == 2 and stderr.count("\n") == 1
    assert f"--out {out} already holds items.json, keep.txt" in stderr and "--overwrite" in stderr
    assert (out / "items.json").read_text() == "the user's own notes"
    assert _run(capsys, "--input", root, "--out", out, "--size", 8, "--overwrite")[0] == 0
    assert json.loads((out / "items.json").read_text()) == ["a.png"]
    assert (out / "keep.txt").read_text() == "mine"  # --overwrite replaces only its own files
    assert _run(capsys, "--input", root, "--out", out, "--size", 8, "--overwrite")[0] == 0


def test_huge_images_are_skipped_undecoded_and_small_ones_counted_as_upscaled(tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    _png_header_only(root / "huge.png", 9500, 9500)  # 90.25 Mpx: over Pillow's 89.5 Mpx limit
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(root / "small.png")
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(root / "big.png")
    Image.fromarray(np.full((12, 30, 3), 90, np.uint8)).save(root / "wide.png")
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, "--input", root, "--out", out, "--size", 16)
    assert code == 0
    assert (
        "skipped 1 of 4 files: huge.png (9500x9500 is over the limit of 89478485 pixels)" in stdout
    )
    # Centre crop: wide.png's 12-pixel short side is enlarged to 16, as small.png is.
    assert "warning: 2 of 3 items were smaller than 16 pixels and were upscaled" in stdout
    assert stdout.split("upscaled (blurry): ")[1].split("\n")[0] == "small.png, wide.png"
    assert PreparedDataset(str(out)).meta["upscaled"] == 2
    code, stdout, _ = _run(capsys, "--input", root, "--out", tmp_path / "o2", "--size", 16,
                           "--max_pixels", 300)  # fmt: skip
    assert code == 0 and "big.png (20x20 is over the limit of 300 pixels)" in stdout
    assert "skipped 3 of 4 files" in stdout and "wrote 1 items" in stdout
