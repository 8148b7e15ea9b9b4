"""Procedural faces: determinism, exact keypoints, flips, resolutions; the prepared-dataset format."""

import os

import numpy as np
import pytest

from gangealing_jax.data import prepared, procedural
from gangealing_jax.data.procedural import FLIP_PERMUTATION, KEYPOINT_NAMES, ProceduralConfig

SOLID = ProceduralConfig(solid_feature_colors=True)
RED, GREEN = np.array([255, 0, 0]), np.array([0, 255, 0])


def _scene(seed, index, config=SOLID, **pose_changes):
    scene = procedural.sample_scene(procedural.sample_rng(seed, index), config)
    return scene._replace(pose=scene.pose._replace(**pose_changes))


def test_same_seed_same_bytes_and_other_seed_or_index_differs():
    a, b = procedural.render(3, 5), procedural.render(3, 5)
    for x, y in zip(a, b, strict=True):
        assert x.tobytes() == y.tobytes()
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64, 3)
    assert a.keypoints.dtype == np.float32 and a.keypoints.shape == (len(KEYPOINT_NAMES), 3)
    assert a.bbox.dtype == np.float32 and a.bbox.shape == (4,)
    assert procedural.render(4, 5).image.tobytes() != a.image.tobytes()
    assert procedural.render(3, 6).image.tobytes() != a.image.tobytes()


def test_generate_stacks_render_and_start_offsets():
    batch = procedural.generate(4, 7, start=2)
    for i in range(4):
        sample = procedural.render(7, 2 + i)
        np.testing.assert_array_equal(batch.images[i], sample.image)
        np.testing.assert_array_equal(batch.keypoints[i], sample.keypoints)
        np.testing.assert_array_equal(batch.bboxes[i], sample.bbox)


def test_generator_input_draws_from_its_state():
    a = procedural.render(np.random.default_rng(11), 0)
    b = procedural.render(np.random.default_rng(11), 99)
    np.testing.assert_array_equal(a.image, b.image)


SOLID_128 = ProceduralConfig(resolution=128, solid_feature_colors=True)


@pytest.mark.parametrize("index", range(12))
def test_eye_and_nose_keypoints_land_on_the_drawn_features(index):
    # 128 px so that even the smallest nose has fully covered pixels.
    sample = procedural.render_scene(_scene(0, index, SOLID_128), SOLID_128)
    image = sample.image.astype(int)
    red = np.all(image == RED, axis=-1)
    green = np.all(image == GREEN, axis=-1)
    rows, cols = np.mgrid[:128, :128]
    for name, mask, atol in (("left_eye", red, 0.3), ("right_eye", red, 0.3), ("nose", green, 0.5)):
        x, y, visible = sample.keypoints[KEYPOINT_NAMES.index(name)]
        if not (visible and 8 <= x <= 119 and 8 <= y <= 119):
            continue  # a feature cut by the frame has a biased centroid
        assert mask[int(round(y)), int(round(x))], name
        near = mask & ((cols - x) ** 2 + (rows - y) ** 2 < 144)  # this feature's blob only
        # The fully covered pixels of an eye (disc) or nose (triangle around its centroid, or
        # ellipse) are centred on the keypoint up to pixelation and the bend's curvature.
        centroid = [cols[near].mean(), rows[near].mean()]
        np.testing.assert_allclose(centroid, [x, y], atol=atol, err_msg=name)


def test_keypoint_map_inverts_the_pixel_map():
    scene = _scene(1, 3)
    canonical = np.random.default_rng(0).uniform(-0.8, 0.8, size=(50, 2))
    pixels = procedural.canonical_to_pixel(scene.pose, scene.deformation, 64, canonical)
    back = procedural.pixel_to_canonical(scene.pose, scene.deformation, 64, *pixels.T)
    np.testing.assert_allclose(np.stack(back, -1), canonical, atol=2e-5)
    # The bend is real: without it the points would land elsewhere.
    still = scene.deformation._replace(amplitude=0.0)
    rigid = procedural.canonical_to_pixel(scene.pose, still, 64, canonical)
    assert np.abs(rigid - pixels).max() > 0.3


@pytest.mark.parametrize("index", range(4))
def test_flip_mirrors_image_and_permutes_keypoints(index):
    plain = procedural.render_scene(_scene(2, index, flip=False), SOLID)
    flipped = procedural.render_scene(_scene(2, index, flip=True), SOLID)
    np.testing.assert_array_equal(flipped.image, plain.image[:, ::-1])
    mirrored = plain.keypoints[FLIP_PERMUTATION].copy()
    mirrored[:, 0] = 63 - mirrored[:, 0]
    np.testing.assert_allclose(flipped.keypoints, mirrored, atol=1e-5)
    x0, y0, x1, y1 = plain.bbox
    np.testing.assert_allclose(flipped.bbox, [63 - x1, y0, 63 - x0, y1], atol=1e-5)
    # Names follow the viewer's left in both: the left eye has the smaller x.
    for kps in (plain.keypoints, flipped.keypoints):
        assert kps[KEYPOINT_NAMES.index("left_eye"), 0] < kps[KEYPOINT_NAMES.index("right_eye"), 0]


def test_flip_permutation_is_an_involution_pairing_left_with_right():
    np.testing.assert_array_equal(
        FLIP_PERMUTATION[FLIP_PERMUTATION], np.arange(len(KEYPOINT_NAMES))
    )
    for i, j in enumerate(FLIP_PERMUTATION):
        assert KEYPOINT_NAMES[j] == KEYPOINT_NAMES[i].replace("left", "@").replace(
            "right", "left"
        ).replace("@", "right")


def test_keypoints_scale_with_resolution_and_bbox_contains_them():
    small = procedural.render(5, 1, ProceduralConfig(resolution=32))
    large = procedural.render(5, 1, ProceduralConfig(resolution=128))
    assert small.image.shape == (32, 32, 3) and large.image.shape == (128, 128, 3)
    # Pixel centres: p = ((n + 1) * W - 1) / 2 for normalized n, so p128 = 4 * p32 + 1.5.
    np.testing.assert_allclose(large.keypoints[:, :2], 4 * small.keypoints[:, :2] + 1.5, atol=1e-3)
    for sample, res in ((small, 32), (large, 128)):
        inside = sample.keypoints[:, 2] == 1
        x0, y0, x1, y1 = sample.bbox
        assert 0 <= x0 < x1 <= res - 1 and 0 <= y0 < y1 <= res - 1
        xy = sample.keypoints[inside, :2]
        assert np.all((xy >= np.array([x0, y0]) - 1) & (xy <= np.array([x1, y1]) + 1))


def test_visibility_marks_points_outside_the_frame():
    far = ProceduralConfig(scale_range=(1.15, 1.15), max_translation=0.5)
    kps = procedural.generate(16, 3, far).keypoints
    inside = np.all((kps[..., :2] >= -0.5) & (kps[..., :2] <= 63.5), axis=-1)
    np.testing.assert_array_equal(kps[..., 2], inside.astype(np.float32))
    assert 0 < inside.mean() < 1


def test_canonical_keypoints_are_centred_and_symmetric():
    kps = procedural.canonical_keypoints(ProceduralConfig(resolution=64))
    assert kps.shape == (len(KEYPOINT_NAMES), 3) and np.all(kps[:, 2] == 1)
    mirrored = kps[FLIP_PERMUTATION]
    np.testing.assert_allclose(kps[:, 0] + mirrored[:, 0], 63.0, atol=1e-4)
    np.testing.assert_allclose(kps[:, 1], mirrored[:, 1], atol=1e-4)
    assert np.all((kps[:, :2] > 4) & (kps[:, :2] < 59))


@pytest.mark.parametrize(
    "bad",
    [
        dict(resolution=4),
        dict(scale_range=(1.2, 1.0)),
        dict(max_rotation_deg=120.0),
        dict(deform_amplitude=0.2),
        dict(clutter_range=(5, 2)),
    ],
)
def test_config_rejects_bad_ranges(bad):
    with pytest.raises(ValueError):
        ProceduralConfig(**bad)


# ---- prepared datasets ----

SMALL = ProceduralConfig(resolution=32)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("prepared") / "faces")
    prepared.write_procedural_dataset(path, 10, seed=4, config=SMALL, num_pairs=7, chunk=3)
    return path


def test_prepared_round_trip(written):
    ds = prepared.PreparedDataset(written)
    expected = procedural.generate(10, 4, SMALL)
    assert len(ds) == 10 and ds.resolution == 32
    assert isinstance(ds.images, np.memmap)
    np.testing.assert_array_equal(ds.images, expected.images)
    np.testing.assert_array_equal(ds.keypoints, expected.keypoints)
    np.testing.assert_array_equal(ds.bboxes, expected.bboxes)
    item = ds[6]
    np.testing.assert_array_equal(item.image, expected.images[6])
    np.testing.assert_array_equal(item.keypoints, expected.keypoints[6])
    assert ds.pairs.shape == (7, 2) and ds.pairs.dtype == np.int64
    assert np.all(ds.pairs[:, 0] != ds.pairs[:, 1]) and ds.pairs.min() >= 0 and ds.pairs.max() < 10
    np.testing.assert_array_equal(ds.flip_permutation, FLIP_PERMUTATION)
    assert ds.keypoint_names == list(KEYPOINT_NAMES)
    assert ds.meta["source"] == "procedural" and ds.meta["count"] == 10


def test_prepared_does_not_depend_on_chunk_size(written, tmp_path):
    other = prepared.write_procedural_dataset(
        str(tmp_path / "b"), 10, seed=4, config=SMALL, num_pairs=7, chunk=64
    )
    ds = prepared.PreparedDataset(written)
    for name in ("images", "keypoints", "bboxes", "pairs"):
        np.testing.assert_array_equal(getattr(other, name), getattr(ds, name))


def _copy(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    return dst


@pytest.mark.parametrize(
    "missing", ["images.npy", "keypoints.npy", "bboxes.npy", "pairs.npy", "meta.json"]
)
def test_missing_file_names_directory_and_file(written, tmp_path, missing):
    path = _copy(written, str(tmp_path / "ds"))
    os.remove(os.path.join(path, missing))
    with pytest.raises(FileNotFoundError, match=rf"{path}.*{missing}"):
        prepared.PreparedDataset(path)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepared.PreparedDataset(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    "name, array",
    [
        ("keypoints.npy", np.zeros((10, 5, 3), np.float32)),
        ("bboxes.npy", np.zeros((9, 4), np.float32)),
        ("images.npy", np.zeros((10, 32, 32, 3), np.float32)),
        ("pairs.npy", np.array([[0, 10]], np.int64)),
    ],
)
def test_mismatched_file_names_it(written, tmp_path, name, array):
    path = _copy(written, str(tmp_path / "ds"))
    np.save(os.path.join(path, name), array)
    with pytest.raises(prepared.PreparedDatasetError, match=name):
        prepared.PreparedDataset(path)


def test_writer_refuses_overwrite_and_incomplete_finish(written, tmp_path):
    args = dict(count=2, resolution=32, keypoint_names=KEYPOINT_NAMES, source="test")
    with pytest.raises(FileExistsError, match="meta.json"):
        prepared.PreparedWriter(written, flip_permutation=FLIP_PERMUTATION, **args)
    with pytest.raises(prepared.PreparedDatasetError, match="flip_permutation"):
        prepared.PreparedWriter(str(tmp_path / "p"), flip_permutation=[0] * 12, **args)
    writer = prepared.PreparedWriter(str(tmp_path / "w"), flip_permutation=FLIP_PERMUTATION, **args)
    sample = procedural.render(0, 0, SMALL)
    writer.write(0, sample.image[None], sample.keypoints[None], sample.bbox[None])
    with pytest.raises(ValueError, match="never written"):
        writer.finish([[0, 1]])
    assert not os.path.exists(str(tmp_path / "w" / "meta.json"))
