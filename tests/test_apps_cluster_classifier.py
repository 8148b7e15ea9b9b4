"""A clustering model's classifier in the applications: each image goes to the head (and mirror)
the classifier predicts; load_model finds an exported or converted classifier."""

import shutil
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.apps import congeal, pck, propagate
from gangealing_jax.apps import points as point_ops
from gangealing_jax.apps.model import (
    DEFAULT_TEST_TIME,
    AlignmentModel,
    Classifier,
    load_model,
    stn_input,
)
from gangealing_jax.apps.points import mirror
from gangealing_jax.apps.routing import route
from gangealing_jax.convert.convert_checkpoint import convert_checkpoint
from gangealing_jax.convert.state_dict import CheckpointError
from gangealing_jax.models.cluster_classifier import (
    ClusterClassifier,
    assign,
    classifier_config_for_stn,
    mirror_where,
)
from gangealing_jax.models.stn import STN
from gangealing_jax.training.cluster_classifier import export_classifier
from tests.golden import golden_dir, load_fixture
from tests.test_cluster_classifier import _classifier, _torch_state
from tests.tiny_models import identity_model_bundle, tiny_stn_config

K = 3  # heads of the clustering model
# Constant logits over the 2K classes (head 0, 1, 2 as they are; head 0, 1, 2 mirrored): the best
# is class 4 (head 1, mirrored); for head 2 the mirror wins (2.0 > 0.0), for head 0 it loses.
FORCED = [1.0, 0.0, 0.0, 0.0, 4.0, 2.0]


def _stn(num_heads=K):
    """A tiny STN whose heads warp differently: each its own similarity and residual flow."""
    config = tiny_stn_config(flow_size=16, supersize=32, num_heads=num_heads)
    stn = STN(config)
    variables = jax.jit(stn.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    linear = variables["params"]["stns_0"]["warp_head"]["linear"]
    linear["bias"] = 0.3 * jax.random.normal(jax.random.PRNGKey(1), linear["bias"].shape)
    flow = variables["params"]["stns_1"]["warp_head"]["flow_out_2"]
    flow["weight"] = 2.0 * jax.random.normal(jax.random.PRNGKey(2), flow["weight"].shape)
    return stn, variables


def _model(logit_bias=None, flips=True, seed=3) -> AlignmentModel:
    """The clustering model with a classifier: random, or with constant logits `logit_bias`."""
    stn, variables = _stn()
    module = ClusterClassifier(classifier_config_for_stn(stn.config, flips=flips))
    cls_vars = jax.jit(module.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 3)))
    if logit_bias is not None:
        head = cls_vars["params"]["to_logits"]
        head["weight"] = jnp.zeros_like(head["weight"])
        head["bias"] = jnp.asarray(logit_bias, jnp.float32)
    classifier = Classifier(module, cls_vars, "test")
    return AlignmentModel(stn, variables, dict(DEFAULT_TEST_TIME), "test", classifier)


def _images(n=4, seed=0):
    """uint8 (n, 32, 32, 3): smooth blobs of different brightness, so that a random classifier
    does not put them all in one class."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32] / 31.0
    out = []
    for level in np.linspace(0.1, 0.9, n):
        cx, cy = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.05)[..., None]
        colour = rng.uniform(0, 1, 3)
        out.append(np.clip(level * (1 - blob) + colour * blob, 0, 1))
    return np.round(np.stack(out) * 255).astype(np.uint8)


def _congealed(model, source, heads, resolution=32):
    heads = jnp.broadcast_to(jnp.asarray(heads, jnp.int32), (source.shape[0],))
    return model.congeal(stn_input(source, 16), source, output_resolution=resolution, heads=heads)


def test_images_go_to_the_head_and_mirror_the_classifier_predicts():
    model = _model(FORCED)
    images = _images()

    @jax.jit  # one program: compiling once is what takes the time on a CPU
    def run(images):
        source = congeal.to_signed(images)
        routes = {c: route(model, source, flips=False, cluster=c) for c in (2, 0)}
        congealed = {h: _congealed(model, mirror(source), h).image for h in (1, 0)}
        return congeal.congeal_batch(model, images), routes, congealed

    out, routes, congealed = run(images)
    np.testing.assert_array_equal(out.head, [1] * 4)
    np.testing.assert_array_equal(out.flipped, [True] * 4)
    np.testing.assert_allclose(out.image, congealed[1], atol=1e-5)
    assert not np.allclose(congealed[1], congealed[0], atol=1e-2)  # the heads differ
    # A given cluster keeps its head; the mirror is the better of that head's two classes.
    for cluster, mirrored in ((2, True), (0, False)):
        np.testing.assert_array_equal(routes[cluster].heads, [cluster] * 4)
        np.testing.assert_array_equal(routes[cluster].flipped, [mirrored] * 4)
    # A classifier without flip classes picks heads only; nothing is mirrored without flips.
    heads_only = _model([0.0, 3.0, 1.0], flips=False)
    chosen = jax.jit(lambda x: route(heads_only, x, flips=False))(congeal.to_signed(images))
    np.testing.assert_array_equal(chosen.heads, [1] * 4)
    assert not np.any(chosen.flipped)
    # Without a classifier a clustering model still needs the cluster.
    with pytest.raises(ValueError, match="no cluster classifier"):
        jax.eval_shape(lambda x: congeal.congeal_batch(model._replace(classifier=None), x), images)


def test_sharded_congealing_follows_per_image_predictions():
    model = _model(seed=5)
    images = _images(8)

    @jax.jit
    def expected(images):
        source = congeal.to_signed(images)
        choice = assign(model.classifier.logits(source), K)
        inputs = mirror_where(source, choice.flip)
        return choice, _congealed(model, inputs, choice.head).image

    choice, congealed = expected(images)
    assert len(np.unique(choice.head)) > 1  # the images do not all go to one head
    summary = congeal.congeal_dataset(model, images, batch_size=8)  # 8 devices, weights replicated
    np.testing.assert_array_equal(summary.heads, choice.head)
    np.testing.assert_array_equal(summary.flipped, choice.flip)
    np.testing.assert_allclose(summary.grid_images, congealed, atol=1e-5)


def test_keypoint_transfer_and_edits_use_the_predicted_head_and_mirror():
    model = _model(FORCED)
    images_a, images_b = _images(4, seed=1), _images(4, seed=2)
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(4, 27, (2, 4, 3, 2)), np.ones((2, 4, 3, 1))], -1)
    permutation = np.array([1, 0, 2])  # keypoints 0 and 1 swap names in a mirrored image
    # Both images of every pair: head 1, mirrored (keypoints mirrored and relabelled).
    mirrored = points[..., permutation, :].copy()
    mirrored[..., 0] = 31 - mirrored[..., 0]

    @jax.jit
    def run(images_a, images_b, points):
        transferred = pck.transfer_batch(
            model, images_a, images_b, points[0], points[1], permutation
        )
        source_a = mirror(congeal.to_signed(images_a))
        out_a = _congealed(model, source_a, 1, resolution=None)  # at flow size, as PCK runs it
        out_b = _congealed(model, mirror(congeal.to_signed(images_b)), 1, resolution=None)
        congealed = point_ops.congealed_points_from_output(out_a, mirrored[0, ..., :2], 32)
        direct = point_ops.source_points_from_output(
            out_b, congealed, 32, input_size=16, normalize_input_points=True
        )
        return transferred, direct, _congealed(model, source_a, 1).image

    (estimate, kps_a, kps_b), direct, congealed_a = run(images_a, images_b, points)
    np.testing.assert_allclose(kps_a, mirrored[0], atol=1e-5)
    np.testing.assert_allclose(kps_b, mirrored[1], atol=1e-5)
    np.testing.assert_allclose(estimate, direct, atol=1e-4)
    # An edit is carried through the same head and mirror.
    edit = propagate.edit_points(np.full((32, 32, 4), 255, np.uint8), stride=8)
    spread = propagate.make_propagator(model, edit, batch_size=8)(images_a)
    np.testing.assert_allclose(spread.congealed, congealed_a, atol=1e-5)


class _Exported(NamedTuple):  # what export_classifier reads from a training state
    step: jnp.ndarray
    params: dict


def _export(directory, model_dir, num_heads=2, seed=3):
    config = tiny_stn_config(flow_size=16, supersize=32, num_heads=num_heads)
    module = ClusterClassifier(classifier_config_for_stn(config, flips=True))
    params = jax.jit(module.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 3)))
    export_classifier(directory, module, _Exported(jnp.int32(7), params), model_dir)
    return params


def _same(actual, expected):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(actual), jax.device_get(expected))


def test_load_model_finds_an_exported_classifier(tmp_path):
    run = tmp_path / "run"
    identity_model_bundle(run / "model", num_heads=2)
    assert load_model(run).classifier is None
    params = _export(tmp_path / "cls" / "classifier", run / "model")
    # The classifier's work directory names the model it was trained for.
    model = load_model(tmp_path / "cls")
    assert model.path == str((run / "model").absolute())
    assert model.stn.config.num_heads == 2 and model.classifier.flips
    _same(model.classifier.variables, params)
    _same(load_model(run, classifier=tmp_path / "cls").classifier.variables, params)
    # Trained with --workdir RUN/classifier, it is found with the run.
    inside = _export(run / "classifier" / "classifier", run / "model", seed=4)
    for path in (run, run / "model"):
        _same(load_model(path).classifier.variables, inside)
    _export(tmp_path / "three" / "classifier", run / "model", num_heads=3)
    with pytest.raises(CheckpointError, match="predicts 3 clusters, the STN has 2 heads"):
        load_model(run, classifier=tmp_path / "three")
    shutil.move(run, tmp_path / "moved")
    with pytest.raises(CheckpointError, match="not there"):
        load_model(tmp_path / "cls")


def test_reference_checkpoint_and_its_conversion_carry_the_classifier(tmp_path):
    stn_state = load_fixture(golden_dir() / "stn.npz").state  # a one-head reference STN
    module, variables = _classifier(size=16, supersize=32, num_heads=1, flips=True)
    state = {f"t_ema/{k}": v for k, v in stn_state.items()}
    state.update({f"classifier/{k}": v for k, v in _torch_state(variables, module.config).items()})
    path = tmp_path / "reference.npz"
    np.savez(path, **state)
    model = load_model(path)
    assert model.classifier.module.config == module.config
    _same(model.classifier.variables, variables)
    written = convert_checkpoint(path, tmp_path / "converted")
    assert written["classifier"][0] == "cluster_classifier"
    converted = load_model(tmp_path / "converted")
    assert converted.classifier.module.config == module.config
    _same(converted.classifier.variables, variables)
    _same(converted.variables, model.variables)
