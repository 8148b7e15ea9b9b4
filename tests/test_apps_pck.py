"""PCK-Transfer evaluation of a model on a prepared dataset, its CLI, and the post-training
evaluation that writes summary.json."""

import dataclasses
import json

import jax
import ml_collections
import numpy as np
import pytest

from gangealing_jax.apps import evaluate, pck
from gangealing_jax.apps.model import AlignmentModel, load_model
from gangealing_jax.data import procedural
from gangealing_jax.data.prepared import PreparedDataset, write_procedural_dataset
from gangealing_jax.training.parallel import make_mesh
from tests.tiny_models import identity_model_bundle, perturbed


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("procedural") / "data"
    family = procedural.ProceduralConfig(resolution=32)
    return write_procedural_dataset(str(path), 12, seed=5, config=family, num_pairs=16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An exported model whose STN is untrained: its warp starts at the identity."""
    return identity_model_bundle(tmp_path_factory.mktemp("model") / "model")


def test_identity_transfer_onto_the_same_image_is_perfect(dataset):
    same = PreparedDataset(dataset.path)
    same.pairs = np.stack([np.arange(len(same)), np.arange(len(same))], axis=-1)
    report = pck.evaluate_pck(None, same, alphas=(0.1, 0.01), batch_size=8)
    assert report.pck == {"0.1": 1.0, "0.01": 1.0}
    assert report.stderr == {"0.1": 0.0, "0.01": 0.0}
    assert report.pairs == len(same)


def test_untrained_stn_scores_like_the_identity_warp(dataset, model_dir):
    model = load_model(model_dir)
    assert isinstance(model, AlignmentModel) and model.flow_size == 16
    stn = pck.evaluate_pck(model, dataset, alphas=(0.1, 0.05), batch_size=8)
    identity = pck.evaluate_pck(None, dataset, alphas=(0.1, 0.05), batch_size=8)
    assert stn.keypoints == identity.keypoints > 0
    # The flow stage maps points through a nearest-neighbour search on its 16x16 grid: at most
    # one grid cell (2 px of 32) of error, well inside the bbox threshold at alpha 0.1.
    assert abs(stn.pck["0.1"] - identity.pck["0.1"]) < 0.1
    assert 0.0 < identity.pck["0.1"] < 1.0


def test_sharded_evaluation_equals_one_device(dataset, model_dir):
    model = load_model(model_dir)
    options = dict(protocol="cub", alphas=(0.1, 0.05), batch_size=8, num_pairs=6, seed=3)
    one = pck.evaluate_pck(model, dataset, mesh=make_mesh(jax.devices()[:1]), **options)
    many = pck.evaluate_pck(model, dataset, mesh=make_mesh(jax.devices()), **options)
    assert len(jax.devices()) == 8
    assert one.pck == many.pck and one.pairs == many.pairs == 12  # both directions


def test_flip_matching_runs_and_keeps_counts(dataset, model_dir):
    model = load_model(model_dir)
    flips = model._replace(test_time=dict(model.test_time, flips=True))
    plain = pck.evaluate_pck(model, dataset, alphas=(0.1, 0.05), batch_size=8)
    mirrored = pck.evaluate_pck(flips, dataset, alphas=(0.1, 0.05), batch_size=8)
    assert mirrored.pairs == plain.pairs and mirrored.keypoints == plain.keypoints
    # The untrained STN's residual flow is exactly zero for every image and mirror, so all four
    # pairings tie and the first (neither mirrored) is kept: the same score to the last digit.
    assert mirrored.pck == plain.pck


@pytest.mark.parametrize("transforms", [("similarity", "flow"), ("similarity",)])
def test_scoring_from_each_image_congealed_once_equals_congealing_every_pair(
    dataset, model_dir, transforms
):
    model = load_model(model_dir)
    stn = model.stn.clone(config=dataclasses.replace(model.stn.config, transforms=transforms))
    variables = jax.jit(stn.init)(jax.random.PRNGKey(1), np.zeros((1, 16, 16, 3), np.float32))
    # Non-zero warp heads: every image gets a warp of its own.
    model = model._replace(stn=stn, variables=perturbed(variables, jax.random.PRNGKey(2), 0.05))
    options = dict(alphas=(0.1, 0.05), batch_size=8)
    per_pair = pck.evaluate_pck(model, dataset, **options)
    outputs = pck.congeal_each(model, dataset.images, batch_size=5)
    assert outputs.grid.shape[0] == len(dataset)
    assert (outputs.flow is None) == (transforms == ("similarity",))
    once = pck.evaluate_pck(model, dataset, congealed=outputs, **options)
    identity = pck.evaluate_pck(None, dataset, **options)
    assert once.pck == pytest.approx(per_pair.pck, abs=1e-12)
    assert once.keypoints == per_pair.keypoints and once.pck != identity.pck


def test_cli_writes_the_report(dataset, model_dir, tmp_path, capsys):
    out = tmp_path / "pck.json"
    args = ["--model", str(model_dir), "--data", dataset.path, "--alphas", "0.1,0.05"]
    assert pck.main([*args, "--identity", "--batch", "8", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"stn", "identity"}
    assert set(report["stn"]["pck"]) == {"0.1", "0.05"}
    assert json.loads(capsys.readouterr().out) == report


def test_evaluate_run_renders_held_out_faces_and_writes_visuals(tmp_path, model_dir):
    config = ml_collections.ConfigDict(
        {
            "seed": 0,
            "eval": {
                "data": "procedural", "protocol": "spair", "alphas": (0.1, 0.05), "flips": False,
                "batch": 8, "num_pairs": 10, "resolution": 32, "count": 10, "seed": 9,
                "clutter_range": (1, 4),
            },
        }
    )  # fmt: skip
    summary = evaluate.evaluate_run(config, tmp_path, model_dir)
    assert set(summary["pck"]) == {"stn", "identity"}
    assert summary["pairs"] == 10
    for name in ("congealed_grid.png", "congealed_average.png", "input_grid.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert PreparedDataset(str(tmp_path / "eval_data")).meta["seed"] == 9
    again = evaluate.evaluate_run(config, tmp_path, model_dir)  # reuses the rendered set
    assert again["pck"] == summary["pck"]
    config.eval.count = 11
    with pytest.raises(FileExistsError, match="another evaluation set"):
        evaluate.evaluate_run(config, tmp_path, model_dir)
