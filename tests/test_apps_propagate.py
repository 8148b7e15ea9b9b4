"""Edit propagation to images and video frames, and the congealing animation."""

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gangealing_jax.apps import animate, propagate, video
from gangealing_jax.apps.congeal import congeal_batch
from gangealing_jax.apps.model import load_model
from gangealing_jax.data import procedural, sources
from gangealing_jax.data.prepared import write_procedural_dataset
from tests.tiny_models import identity_model_bundle


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("procedural") / "data"
    family = procedural.ProceduralConfig(resolution=32)
    return write_procedural_dataset(str(path), 6, seed=5, config=family, num_pairs=4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An exported model whose STN is untrained: its warp starts at the identity."""
    return identity_model_bundle(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory, dataset):
    folder = tmp_path_factory.mktemp("frames")
    for i, image in enumerate(np.asarray(dataset.images)):
        Image.fromarray(image).save(folder / f"frame_{i:03d}.png")
    return folder


def red_square_edit(size=32):
    edit = np.zeros((size, size, 4), np.uint8)
    edit[10:18, 8:16] = (255, 0, 0, 255)
    return edit


def test_identity_model_puts_the_edit_where_it_was_drawn(dataset, model_dir):
    model = load_model(model_dir)
    images = np.asarray(dataset.images)
    result = propagate.propagate_edit(model, images, red_square_edit(), sigma=1.0, batch_size=8)
    assert result.composited.shape == images.shape and result.splatted_rgba.shape == (6, 32, 32, 4)
    assert (result.composited[:, 10:18, 8:16] == (255, 0, 0)).all()
    assert (result.splatted_rgba[:, 10:18, 8:16] == (255, 0, 0, 255)).all()
    # A 1 px Gaussian cut at 2 sigma reaches 2 px beyond the square; beyond, nothing changes.
    far = np.ones((32, 32), bool)
    far[10 - 3 : 18 + 3, 8 - 3 : 16 + 3] = False
    np.testing.assert_array_equal(result.composited[:, far], images[:, far])
    assert (result.splatted_rgba[:, far, 3] == 0).all()


def test_edit_points_at_another_resolution_land_on_pixel_centres(dataset, model_dir):
    model = load_model(model_dir)
    edit = np.zeros((16, 16, 4), np.uint8)
    edit[4:12, 5, :] = 255  # a column at x = 5 of a 16 px congealed image
    points = propagate.edit_points(edit)
    assert points.resolution == 16 and len(points.pixels) == 8
    out = propagate.make_propagator(model, points, batch_size=8)(np.asarray(dataset.images[:2]))
    expected = np.broadcast_to((points.pixels + 0.5) * 2 - 0.5, out.points.shape)
    np.testing.assert_allclose(out.points, expected, atol=1e-4)
    assert out.congealed.shape == (2, 16, 16, 3)


def test_laplacian_blend_takes_the_side_the_mask_selects():
    rng = np.random.default_rng(0)
    back, front = (jnp.asarray(rng.uniform(-1, 1, (2, 24, 20, 3)), jnp.float32) for _ in "ab")
    for mask_value, expected in ((0.0, back), (1.0, front)):
        mask = jnp.full((2, 24, 20, 1), mask_value)
        blended = propagate.laplacian_blend(back, front, mask, levels=3, width=11, sigma=0.5)
        np.testing.assert_allclose(blended, expected, atol=1e-5)
    half = jnp.zeros((2, 24, 20, 1)).at[:, :, 10:].set(1.0)
    blended = propagate.laplacian_blend(back, front, half, levels=3, width=11, sigma=0.5)
    np.testing.assert_allclose(blended[:, :, :4], back[:, :, :4], atol=0.05)
    np.testing.assert_allclose(blended[:, :, -4:], front[:, :, -4:], atol=0.05)


def test_dense_tracking_pattern_and_npy_stream(tmp_path):
    pattern = propagate.dense_tracking_edit(16)
    assert pattern.shape == (16, 16, 4) and (pattern[..., 3] == 255).all()
    assert len(np.unique(pattern[..., :3].reshape(-1, 3), axis=0)) == 256  # every pixel differs
    stream = propagate.NpyStream(tmp_path / "rows.npy", (3, 2))
    rows = np.arange(30, dtype=np.float32).reshape(5, 3, 2)
    stream.append(rows[:2])
    stream.append(rows[2:])
    stream.close()
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy"), rows)


def test_propagate_cli_on_prepared_data_and_on_an_image_folder(
    dataset, model_dir, frame_folder, tmp_path
):
    edit_path = tmp_path / "edit.png"
    Image.fromarray(red_square_edit(), "RGBA").save(edit_path)
    out = tmp_path / "prepared"
    common = ["--model", str(model_dir), "--batch", "8"]
    args = [*common, "--data", dataset.path, "--out", str(out), "--dense_tracking"]
    assert propagate.main([*args, "--save_points", "--stride", "4", "--blend", "laplacian"]) == 0
    assert np.load(out / "points.npy").shape == (6, 64, 2)  # (32 / 4)^2 points per image
    assert np.load(out / "edit_points.npy").shape == (64, 2)
    assert len(json.loads((out / "points_names.json").read_text())) == 6
    for name in ("propagated_grid.png", "input_grid.png", "congealed_grid.png", "edit.png"):
        assert (out / name).stat().st_size > 0
    folder_out = tmp_path / "folder"
    args = [*common, "--data", str(frame_folder), "--edit", str(edit_path), "--size", "32"]
    assert propagate.main([*args, "--out", str(folder_out), "--save_individual"]) == 0
    written = sorted(p.name for p in (folder_out / "propagated").iterdir())
    assert written == [f"frame_{i:03d}.png" for i in range(6)]
    first = np.asarray(Image.open(folder_out / "propagated" / "frame_000.png"))
    assert (first[10:18, 8:16] == (255, 0, 0)).all()


def test_video_cli_writes_a_gif_and_a_frame_folder(model_dir, frame_folder, tmp_path):
    edit_path = tmp_path / "edit.png"
    Image.fromarray(red_square_edit(), "RGBA").save(edit_path)
    args = ["--model", str(model_dir), "--input", str(frame_folder), "--edit", str(edit_path)]
    args += ["--size", "32", "--batch", "8", "--sigma", "1.0"]
    gif = tmp_path / "out.gif"
    assert video.main([*args, "--out", str(gif), "--save_points", str(tmp_path / "p.npy")]) == 0
    with Image.open(gif) as image:
        assert image.n_frames == 6 and image.size == (32, 32)
    assert np.load(tmp_path / "p.npy").shape == (6, 64, 2)
    folder = tmp_path / "frames_out"
    assert video.main([*args, "--out", str(folder), "--side_by_side"]) == 0
    frames = sorted(folder.iterdir())
    assert len(frames) == 6
    frame = np.asarray(Image.open(frames[0]))
    assert frame.shape == (32, 64, 3) and (frame[10:18, 8:16] == (255, 0, 0)).all()
    if not any(importlib.util.find_spec(m) for m in video.VIDEO_BACKENDS):
        with pytest.raises(sources.MissingVideoBackendError, match="imageio"):
            video.FrameWriter(tmp_path / "out.mp4")


def test_animation_starts_at_the_input_and_ends_congealed(dataset, model_dir, tmp_path):
    model = load_model(model_dir)
    variables = jax.tree.map(lambda x: x, model.variables)
    head = variables["params"]["stns_1"]["warp_head"]["flow_out_2"]
    head["weight"] = 3.0 * jax.random.normal(jax.random.PRNGKey(1), head["weight"].shape)
    model = model._replace(variables=variables)  # a visible, non-identity warp
    images = np.asarray(dataset.images[:4])
    frames = list(animate.animation_frames(model, images, frames=3, batch_size=8))
    assert len(frames) == 3 and frames[0].shape == (4, 32, 32, 3)
    np.testing.assert_allclose(frames[0], images / 127.5 - 1.0, atol=1e-6)
    congealed = jax.jit(lambda x: congeal_batch(model, x).image)(images)
    np.testing.assert_allclose(frames[-1], congealed, atol=1e-5)
    assert np.abs(frames[-1] - frames[0]).max() > 0.1
    assert np.abs(frames[1] - frames[0]).max() > 0.01 and np.abs(frames[1] - frames[2]).max() > 0.01
    np.testing.assert_allclose(animate.eased_alphas(3), [0.0, 0.5, 1.0], atol=1e-7)

    edit_path = tmp_path / "edit.png"
    Image.fromarray(red_square_edit(), "RGBA").save(edit_path)
    folder = tmp_path / "anim_frames"
    args = ["--model", str(model_dir), "--data", dataset.path, "--batch", "8", "--n_images", "4"]
    assert animate.main([*args, "--out", str(folder), "--frames", "4", "--hold", "2"]) == 0
    written = sorted(folder.iterdir())
    assert len(written) == 6  # 4 frames + 2 held
    assert Image.open(written[0]).size == (2 * 34 + 2, 2 * 34 + 2)  # 2 x 2 grid, 2 px padding
    gif = tmp_path / "anim.gif"  # (Pillow merges identical frames, so count the folder's)
    assert animate.main([*args, "--out", str(gif), "--frames", "2", "--edit", str(edit_path)]) == 0
    with Image.open(gif) as image:
        assert image.size == (70, 70) and image.n_frames >= 1
