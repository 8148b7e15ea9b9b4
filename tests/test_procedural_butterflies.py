"""Procedural butterflies: determinism, exact keypoints, flips, the family selector."""

import numpy as np
import pytest

from gangealing_jax.data import families, prepared, procedural
from gangealing_jax.data import procedural_butterflies as butterflies
from gangealing_jax.data.procedural_butterflies import FLIP_PERMUTATION, KEYPOINT_NAMES

NUM = len(KEYPOINT_NAMES)

CONFIG = families.family_config("butterflies")
SOLID_128 = families.family_config("butterflies", resolution=128, solid_feature_colors=True)
RED, GREEN, BLUE = np.array([255, 0, 0]), np.array([0, 255, 0]), np.array([0, 0, 255])


def _scene(seed, index, config=SOLID_128, **pose_changes):
    scene = butterflies.sample_scene(procedural.sample_rng(seed, index), config)
    return scene._replace(pose=scene.pose._replace(**pose_changes))


def test_same_seed_same_bytes_and_other_seed_or_index_differs():
    a, b = butterflies.render(3, 5, CONFIG), butterflies.render(3, 5, CONFIG)
    for x, y in zip(a, b, strict=True):
        assert x.tobytes() == y.tobytes()
    assert a.image.shape == (64, 64, 3) and a.keypoints.shape == (len(KEYPOINT_NAMES), 3)
    assert butterflies.render(4, 5, CONFIG).image.tobytes() != a.image.tobytes()
    assert butterflies.render(3, 6, CONFIG).image.tobytes() != a.image.tobytes()
    batch = butterflies.generate(3, 3, CONFIG, start=4)
    np.testing.assert_array_equal(batch.images[1], a.image)
    np.testing.assert_array_equal(batch.keypoints[1], a.keypoints)


@pytest.mark.parametrize("index", range(12))
def test_spot_and_head_keypoints_land_on_the_drawn_parts(index):
    sample = butterflies.render_scene(_scene(0, index), SOLID_128)
    image = sample.image.astype(int)
    rows, cols = np.mgrid[:128, :128]
    checks = [("head", GREEN, 0.4)]
    checks += [(f"{side}_forewing_spot", RED, 0.4) for side in ("left", "right")]
    checks += [(f"{side}_hindwing_spot", BLUE, 0.4) for side in ("left", "right")]
    for name, colour, atol in checks:
        x, y, visible = sample.keypoints[KEYPOINT_NAMES.index(name)]
        if not (visible and 8 <= x <= 119 and 8 <= y <= 119):
            continue  # a part cut by the frame has a biased centroid
        mask = np.all(image == colour, axis=-1)
        assert mask[int(round(y)), int(round(x))], name
        near = mask & ((cols - x) ** 2 + (rows - y) ** 2 < 36)  # this part's disc only
        np.testing.assert_allclose([cols[near].mean(), rows[near].mean()], [x, y], atol=atol)


@pytest.mark.parametrize("index", range(6))
def test_tips_end_the_drawn_parts(index):
    # The same butterfly over a black and a white background: pixels it covers agree. Just inside
    # each tip (towards the thorax) the object is opaque; just beyond it the background shows.
    scene = _scene(1, index, flip=False)
    kps = butterflies.butterfly_keypoints(scene.butterfly)
    images = []
    for level in (0.0, 255.0):
        sample = procedural.place_and_draw(
            np.full((3, 128, 128), level, np.float32),
            scene.pose,
            scene.deformation,
            lambda canvas: butterflies.draw_butterfly(canvas, scene.butterfly),
            kps,
            butterflies.butterfly_outline(scene.butterfly),
            FLIP_PERMUTATION,
        )
        images.append(sample.image.astype(int))
    opaque = np.all(images[0] == images[1], axis=-1)
    xy = sample.keypoints[:, :2]
    thorax = xy[KEYPOINT_NAMES.index("thorax")]
    for name in ("head", "thorax", "left_antenna_tip", "right_antenna_tip"):
        x, y = np.round(xy[KEYPOINT_NAMES.index(name)]).astype(int)
        assert opaque[y, x], name
    for name in ("abdomen_tip", "left_forewing_tip", "right_forewing_tip", "left_hindwing_tip",
                 "right_hindwing_tip"):  # fmt: skip
        tip = xy[KEYPOINT_NAMES.index(name)]
        inward = (thorax - tip) / np.linalg.norm(thorax - tip)
        x, y = np.round(tip + 2.0 * inward).astype(int)
        assert opaque[y, x], name
        # Beyond the tip's outline rim (drawn outside the wing) by 1.5 pixels.
        beyond = 1.5 + butterflies.OUTLINE_WIDTH * scene.pose.scale * 64
        x, y = np.round(tip - beyond * inward).astype(int)
        assert not opaque[y, x], name


@pytest.mark.parametrize("index", range(4))
def test_flip_mirrors_image_and_permutes_keypoints(index):
    plain = butterflies.render_scene(_scene(2, index, CONFIG, flip=False), CONFIG)
    flipped = butterflies.render_scene(_scene(2, index, CONFIG, flip=True), CONFIG)
    np.testing.assert_array_equal(flipped.image, plain.image[:, ::-1])
    mirrored = plain.keypoints[FLIP_PERMUTATION].copy()
    mirrored[:, 0] = 63 - mirrored[:, 0]
    np.testing.assert_allclose(flipped.keypoints, mirrored, atol=1e-5)
    # Names follow the viewer's left in both (poses rotate at most 30 degrees).
    for kps in (plain.keypoints, flipped.keypoints):
        for part in ("antenna_tip", "forewing_tip", "forewing_spot", "hindwing_tip"):
            left, right = (
                KEYPOINT_NAMES.index(f"left_{part}"),
                KEYPOINT_NAMES.index(f"right_{part}"),
            )
            assert kps[left, 0] < kps[right, 0], part


def test_flip_permutation_is_an_involution_pairing_left_with_right():
    np.testing.assert_array_equal(
        FLIP_PERMUTATION[FLIP_PERMUTATION], np.arange(len(KEYPOINT_NAMES))
    )
    for i, j in enumerate(FLIP_PERMUTATION):
        swapped = KEYPOINT_NAMES[i].replace("left", "@").replace("right", "left")
        assert KEYPOINT_NAMES[j] == swapped.replace("@", "right")


def test_canonical_keypoints_are_symmetric_and_the_object_smaller_than_a_face():
    kps = butterflies.canonical_keypoints(CONFIG)
    mirrored = kps[FLIP_PERMUTATION]
    np.testing.assert_allclose(kps[:, 0] + mirrored[:, 0], 63.0, atol=1e-4)
    np.testing.assert_allclose(kps[:, 1], mirrored[:, 1], atol=1e-4)
    faces = procedural.generate(32, 0, procedural.ProceduralConfig()).bboxes
    ours = butterflies.generate(32, 0, CONFIG).bboxes
    area = lambda b: np.median((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))  # noqa: E731
    assert area(ours) < 0.6 * area(faces)


def test_selector_and_prepared_dataset_carry_the_family(tmp_path):
    assert families.family_module("faces") is procedural
    assert families.family_config("faces") == procedural.ProceduralConfig()
    with pytest.raises(ValueError, match="butterflies"):
        families.family_module("moths")
    data = prepared.write_procedural_dataset(
        str(tmp_path / "b"), 6, 9, CONFIG, num_pairs=4, family="butterflies"
    )
    assert data.meta["family"] == "butterflies" and len(data) == 6
    np.testing.assert_array_equal(data.images[2], butterflies.render(9, 2, CONFIG).image)
    np.testing.assert_array_equal(data.keypoints[2], butterflies.render(9, 2, CONFIG).keypoints)
    np.testing.assert_array_equal(data.flip_permutation, FLIP_PERMUTATION)


def test_gan_trainer_renders_the_chosen_family_or_says_the_prepared_data_overrides_it(
    tmp_path, capsys
):
    from configs.gan import test as gan_test
    from gangealing_jax.training.gan_loop import training_images

    config = gan_test.get_config()
    config.data.family = "butterflies"
    images = training_images(config, tmp_path)
    expected = butterflies.generate(
        2, 0, families.family_config("butterflies", resolution=8, clutter_range=(1, 4))
    )
    np.testing.assert_array_equal(images[:2], expected.images)
    assert capsys.readouterr().out == ""
    prepared.write_procedural_dataset(str(tmp_path / "p"), 3, 1, procedural.ProceduralConfig(8))
    config.data.path = str(tmp_path / "p")
    assert len(training_images(config, tmp_path)) == 3
    out = capsys.readouterr().out
    assert "3 images" in out and "data.size" in out and "clutter_range" in out


def test_evaluation_renders_the_chosen_family_and_refuses_a_set_of_another(tmp_path):
    import ml_collections

    from gangealing_jax.apps.evaluate import evaluation_dataset

    config = ml_collections.ConfigDict(
        {"data": "procedural", "num_pairs": 5, "resolution": 32, "count": 6, "seed": 9,
         "clutter_range": (1, 4), "family": "butterflies"}
    )  # fmt: skip
    data = evaluation_dataset(config, tmp_path)
    assert data.meta["family"] == "butterflies" and data.keypoints.shape == (6, NUM, 3)
    family = families.family_config("butterflies", resolution=32, clutter_range=(1, 4))
    expected = butterflies.render(9, 3, family)
    np.testing.assert_array_equal(data.images[3], expected.image)
    assert len(evaluation_dataset(config, tmp_path)) == 6  # reused
    config.family = "faces"
    with pytest.raises(FileExistsError, match="another evaluation set"):
        evaluation_dataset(config, tmp_path)


@pytest.mark.parametrize("family", ["faces", "butterflies"])
def test_similarity_ceiling_of_a_rendered_set(tmp_path, family):
    from gangealing_jax.apps.evaluate import similarity_ceiling

    config = families.family_config(family, resolution=64, clutter_range=(1, 4))
    data = prepared.write_procedural_dataset(
        str(tmp_path / family), 24, 5, config, num_pairs=60, family=family
    )
    ceiling = similarity_ceiling(data, (0.1, 0.05, 10.0), "spair")
    assert 0.5 < ceiling["0.05"] < ceiling["0.1"] < 1.0 and ceiling["10"] == 1.0
    assert similarity_ceiling(data, (0.1,), "cub") is None

    class SelfPairs:  # each image with itself: undoing the same pose twice is exact
        meta, keypoints, bboxes = data.meta, data.keypoints, data.bboxes
        pairs = np.stack([np.arange(24)] * 2, axis=-1)

        def __len__(self):
            return 24

    assert similarity_ceiling(SelfPairs(), (0.001,), "spair") == {"0.001": 1.0}
