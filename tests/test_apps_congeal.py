"""Congealing a dataset (grid, average, flow scores) and writing an aligned, filtered copy."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.apps import congeal
from gangealing_jax.apps import filter as filtering
from gangealing_jax.apps.model import load_model
from gangealing_jax.apps.pck import stn_input
from gangealing_jax.apps.points import flow_scores
from gangealing_jax.data import procedural
from gangealing_jax.data.prepared import PreparedDataset, write_procedural_dataset
from gangealing_jax.ops.sampling import normalize_points, unnormalize_points
from gangealing_jax.training.parallel import make_mesh
from tests.tiny_models import identity_model_bundle


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("procedural") / "data"
    family = procedural.ProceduralConfig(resolution=32)
    return write_procedural_dataset(str(path), 12, seed=5, config=family, num_pairs=16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An exported model whose STN is untrained: its warp starts at the identity."""
    return identity_model_bundle(tmp_path_factory.mktemp("model") / "model")


def perturbed(model, flow_scale=3.0, log_scale=0.0):
    """The model with a random (non-identity) residual flow and a zoom of exp(log_scale)."""
    variables = jax.tree.map(lambda x: x, model.variables)
    head = variables["params"]["stns_1"]["warp_head"]["flow_out_2"]
    head["weight"] = flow_scale * jax.random.normal(jax.random.PRNGKey(1), head["weight"].shape)
    linear = variables["params"]["stns_0"]["warp_head"]["linear"]
    linear["bias"] = jnp.asarray(linear["bias"]).at[1].set(log_scale)  # (rot, log-scale, tx, ty)
    return model._replace(variables=variables)


def test_identity_model_congeals_to_the_inputs(dataset, model_dir):
    model = load_model(model_dir)
    summary = congeal.congeal_dataset(model, dataset.images, n_mean=5, batch_size=8)
    inputs = np.asarray(dataset.images) / 127.5 - 1.0
    assert summary.grid_images.shape == inputs.shape
    # The 16 px flow grid is resized to 32 px: exact inside, half a pixel off on the outer ring.
    inner = (slice(None), slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(summary.grid_images[inner], inputs[inner], atol=1e-5)
    np.testing.assert_allclose(summary.grid_images, inputs, atol=0.5)
    np.testing.assert_allclose(
        summary.average[1:-1, 1:-1], inputs[:5, 1:-1, 1:-1].mean(0), atol=1e-5
    )
    np.testing.assert_array_equal(summary.flow_scores, np.zeros(12))
    assert not summary.flipped.any()


def test_sharded_congealing_equals_one_device_and_flips_pick_smoother_flows(dataset, model_dir):
    model = perturbed(load_model(model_dir))
    options = dict(n_mean=7, n_grid=5, batch_size=8, flips=False)
    one = congeal.congeal_dataset(
        model, dataset.images, mesh=make_mesh(jax.devices()[:1]), **options
    )
    many = congeal.congeal_dataset(model, dataset.images, mesh=make_mesh(jax.devices()), **options)
    assert len(jax.devices()) == 8
    np.testing.assert_allclose(many.average, one.average, atol=1e-5)
    np.testing.assert_allclose(many.grid_images, one.grid_images, atol=1e-5)
    np.testing.assert_allclose(many.flow_scores, one.flow_scores, rtol=1e-5)
    assert many.grid_images.shape == (5, 32, 32, 3)
    source = jnp.asarray(dataset.images) / 127.5 - 1.0
    direct = jax.jit(lambda x: flow_scores(model.congeal(stn_input(x, 16), x).flow))(source)
    np.testing.assert_allclose(one.flow_scores, direct, rtol=1e-5)
    assert np.ptp(one.flow_scores) > 0
    flipped = congeal.congeal_dataset(model, dataset.images, **dict(options, flips=True))
    assert flipped.flipped.any()
    assert (flipped.flow_scores >= one.flow_scores - 1e-6).all()
    assert (flipped.flow_scores[flipped.flipped] > one.flow_scores[flipped.flipped]).all()


def test_filter_keeps_the_best_fraction_and_writes_a_prepared_dataset(dataset, model_dir, tmp_path):
    model = perturbed(load_model(model_dir))
    scores = congeal.congeal_dataset(model, dataset.images, batch_size=8, flips=False).flow_scores
    out = tmp_path / "filtered"
    report = filtering.filter_dataset(
        model, dataset, str(out), fraction_retained=0.5, min_effective_resolution=16, batch_size=8
    )
    best = np.sort(np.argsort(-scores)[:6])
    np.testing.assert_array_equal(report.indices, best)
    assert (report.total, report.kept_by_score, report.written) == (12, 6, 6)
    filtered = PreparedDataset(str(out))
    assert len(filtered) == 6 and filtered.resolution == 32
    # The similarity stage is the identity, so aligned images and annotations are unchanged.
    np.testing.assert_array_equal(filtered.images, dataset.images[best])
    np.testing.assert_allclose(filtered.keypoints, dataset.keypoints[best], atol=1e-4)
    np.testing.assert_array_equal(np.load(out / "dataset_indices.npy"), best)
    old_pairs = {tuple(p) for p in np.asarray(dataset.pairs)}
    assert {tuple(best[p]) for p in filtered.pairs} <= old_pairs
    assert len(filtered.pairs) == sum(a in best and b in best for a, b in old_pairs)


def test_filter_maps_keypoints_through_the_zoom_and_rejects_low_resolution(
    dataset, model_dir, tmp_path
):
    zoom = np.log(0.75)  # a zoom in: the aligned crop covers 0.75 x 32 = 24 source pixels
    model = perturbed(load_model(model_dir), flow_scale=0.0, log_scale=zoom)
    options = dict(fraction_retained=1.0, batch_size=8)
    report = filtering.filter_dataset(
        model, dataset, str(tmp_path / "a"), min_effective_resolution=23.9, **options
    )
    assert report.written == 12 and report.low_resolution == 0
    filtered = PreparedDataset(str(tmp_path / "a"))
    source = dataset.keypoints[..., :2]
    expected = unnormalize_points(normalize_points(source, 32, 32) / 0.75, 32, 32)
    inside = ((expected >= 0) & (expected <= 31)).all(-1)
    np.testing.assert_allclose(filtered.keypoints[..., :2], expected, atol=1e-3)
    np.testing.assert_array_equal(filtered.keypoints[..., 2], dataset.keypoints[..., 2] * inside)
    assert (~inside & (dataset.keypoints[..., 2] > 0)).any()  # some keypoints left the crop
    with pytest.raises(ValueError, match="no image passed the filters"):
        filtering.filter_dataset(
            model, dataset, str(tmp_path / "b"), min_effective_resolution=24.1, **options
        )
    zoomed_out = perturbed(load_model(model_dir), flow_scale=0.0, log_scale=np.log(1.2))
    with pytest.raises(ValueError, match="12 out of bounds"):
        filtering.filter_dataset(
            zoomed_out, dataset, str(tmp_path / "c"), min_effective_resolution=0, **options
        )


def test_retained_by_score():
    scores = np.array([0.5, -1.0, 2.0, 0.5, -3.0])
    np.testing.assert_array_equal(filtering.retained_by_score(scores, 0.6), [0, 2, 3])
    np.testing.assert_array_equal(filtering.retained_by_score(scores, 1.0), np.arange(5))
    with pytest.raises(ValueError):
        filtering.retained_by_score(scores, 0.0)


def test_cli_writes_visuals_scores_and_a_filtered_dataset(dataset, model_dir, tmp_path):
    out = tmp_path / "visuals"
    args = ["--model", str(model_dir), "--data", dataset.path, "--batch", "8"]
    assert congeal.main([*args, "--out", str(out), "--n_mean", "4"]) == 0
    for name in ("congealed_grid.png", "input_grid.png", "average.png"):
        assert (out / name).stat().st_size > 0
    assert np.load(out / "average.npy").shape == (32, 32, 3)
    scores = json.loads((out / "flow_scores.json").read_text())
    assert len(scores["flow_scores"]) == 12 and np.load(out / "flow_scores.npy").shape == (12,)
    filtered = tmp_path / "filtered"
    filter_args = ["--filter", "--fraction_retained", "0.25", "--min_effective_resolution", "16"]
    assert congeal.main([*args, "--out", str(filtered), *filter_args]) == 0
    assert len(PreparedDataset(str(filtered))) == 3
    assert json.loads((filtered / "filter_report.json").read_text())["written"] == 3
