"""Perceptual losses: LPIPS / vgg_ssl parity with the reference, gradients, the weight-free loss,
weight conversion and the missing-weights error."""

from __future__ import annotations

import functools
import os
import re
import tempfile
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gangealing_jax.convert import perceptual as convert
from gangealing_jax.losses import perceptual as P
from gangealing_jax.models.vgg import VGG16, VGGFeatures, conv_name
from tests.golden import assert_close, golden_cases, load_fixture, nchw_to_nhwc

RTOL, ATOL = 1e-4, 1e-6  # README: LPIPS distances
GOLDEN = golden_cases("lpips")

# torchvision `features` index of every conv in VGG16, by stage.
TORCHVISION_CONV_INDICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
TINY_STAGES = ((4, 3), (5, 6), (3, 4, 5), (6, 2, 4), (3, 5, 2))


@functools.cache
def _golden_results(path):
    fixture = load_fixture(path)
    # The fixture holds a full LPIPS module state dict: convert the file as the CLI does and load
    # the bundle that `loss.weights` would point to.
    with tempfile.TemporaryDirectory() as tmp:
        bundle = convert.convert(os.path.join(tmp, "lpips.npz"), lpips_module=str(path))
        weights = P.load_perceptual_weights(bundle, "lpips")
    # vgg_ssl loads the same trunk as a bare `features` state dict (net.sliceS.I.P <-> I.P),
    # which is the SimCLR checkpoint layout.
    simclr_state = {
        re.sub(r"^net\.slice\d+\.", "", k): v
        for k, v in fixture.state.items()
        if k.startswith("net.")
    }
    ssl_weights = convert.weights_from_state(simclr_state)
    x, y = nchw_to_nhwc(fixture.inputs["img0"]), nchw_to_nhwc(fixture.inputs["img1"])

    @jax.jit
    def run(weights, ssl_weights, x, y):
        layers = P.lpips_layer_distances(weights, x, y)
        return {
            "dist_lpips": P.lpips_distance(weights, x, y),
            "layers": layers,
            "dist_lpips_normalize_flag": P.lpips_distance(
                weights, (x + 1) / 2, (y + 1) / 2, normalize=True
            ),
            "dist_vgg_ssl": P.vgg_ssl_distance(ssl_weights, x, y),
        }

    return fixture, jax.device_get(run(weights, ssl_weights, x, y))


@pytest.mark.parametrize("path", GOLDEN)
@pytest.mark.parametrize("name", ["dist_lpips", "dist_lpips_normalize_flag", "dist_vgg_ssl"])
def test_golden_distances(path, name):
    fixture, results = _golden_results(path)
    expected = fixture.outputs[name]
    assert_close(
        results[name], expected.reshape(expected.shape[0]), rtol=RTOL, atol=ATOL, name=name
    )


@pytest.mark.parametrize("path", GOLDEN)
def test_golden_layer_terms(path):
    fixture, results = _golden_results(path)
    layers = results["layers"]
    n = fixture.outputs["dist_lpips"].shape[0]
    expected = [fixture.outputs[f"dist_lpips_layer{k}"].reshape(n) for k in range(5)]
    for k in range(1, 5):
        assert_close(layers[k], expected[k], rtol=RTOL, atol=ATOL, name=f"layer{k}")
    # The reference accumulates in place into its layer-0 entry, so that entry is the total.
    assert_close(sum(layers), expected[0], rtol=RTOL, atol=ATOL, name="layer0 (total)")
    true_layer0 = expected[0] - sum(expected[1:])
    assert_close(layers[0], true_layer0, rtol=RTOL, atol=ATOL, name="true layer0")


def _tiny_torch_state(rng, stages=TINY_STAGES):
    """A torchvision-style `vgg16()` state dict with small widths, plus LPIPS heads."""
    features, heads = {}, {}
    cin = 3
    for stage, (widths, indices) in enumerate(zip(stages, TORCHVISION_CONV_INDICES, strict=True)):
        for width, i in zip(widths, indices, strict=True):
            scale = np.sqrt(2.0 / (9 * cin))
            features[f"features.{i}.weight"] = (
                scale * rng.standard_normal((width, cin, 3, 3))
            ).astype(np.float32)
            features[f"features.{i}.bias"] = (0.05 * rng.standard_normal(width)).astype(np.float32)
            cin = width
        heads[f"lin{stage}.model.1.weight"] = rng.uniform(0, 0.1, (1, cin, 1, 1)).astype(np.float32)
    features["classifier.0.weight"] = rng.standard_normal((7, 5)).astype(np.float32)  # ignored
    return features, heads


def _as_lpips_module_state(features, heads):
    """The same weights as an LPIPS module state dict (net.slice<s>.<i>.*, lin<k>, lins.<k>)."""
    state = {}
    for stage, indices in enumerate(TORCHVISION_CONV_INDICES):
        for i in indices:
            for leaf in ("weight", "bias"):
                state[f"net.slice{stage + 1}.{i}.{leaf}"] = features[f"features.{i}.{leaf}"]
    for k in range(5):
        state[f"lin{k}.model.1.weight"] = heads[f"lin{k}.model.1.weight"]
        state[f"lins.{k}.model.1.weight"] = heads[f"lin{k}.model.1.weight"]
    state["scaling_layer.shift"] = np.float32(P.LPIPS_SHIFT).reshape(1, 3, 1, 1)
    state["scaling_layer.scale"] = np.float32(P.LPIPS_SCALE).reshape(1, 3, 1, 1)
    return state


def _tree_equal(a, b):
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for u, v in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _save_state(path, state):
    """`.npz` always works; `.pt`/`.pth` is written with torch (test skipped without it)."""
    if path.suffix == ".npz":
        np.savez(path, **state)
    else:
        torch = pytest.importorskip("torch")
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)


@pytest.mark.parametrize("suffix", [".npz", ".pth"])
def test_converter_round_trip(tmp_path, suffix):
    features, heads = _tiny_torch_state(np.random.default_rng(1))
    vgg_path, heads_path = tmp_path / f"vgg16{suffix}", tmp_path / f"lpips_heads{suffix}"
    _save_state(vgg_path, features)
    _save_state(heads_path, heads)
    out = tmp_path / "weights.npz"
    convert.main(["--vgg", str(vgg_path), "--lpips-heads", str(heads_path), "--out", str(out)])
    bundle = P.load_perceptual_weights(out, "lpips")

    for stage, indices in enumerate(TORCHVISION_CONV_INDICES):
        for index, i in enumerate(indices):
            conv = bundle.vgg[conv_name(stage, index)]
            oihw = features[f"features.{i}.weight"]
            np.testing.assert_array_equal(conv["kernel"], oihw.transpose(2, 3, 1, 0))
            np.testing.assert_array_equal(conv["bias"], features[f"features.{i}.bias"])
        np.testing.assert_array_equal(
            bundle.heads[stage], heads[f"lin{stage}.model.1.weight"].ravel()
        )
    # The same weights in the LPIPS-module layout give the same bundle.
    _tree_equal(bundle, convert.weights_from_state(_as_lpips_module_state(features, heads)))
    # SimCLR layout: bare `features` keys; the trunk alone makes a vgg_ssl bundle.
    simclr = {k[len("features.") :]: v for k, v in features.items() if k.startswith("features.")}
    simclr_path = tmp_path / f"simclr{suffix}"
    _save_state(simclr_path, simclr)
    ssl_out = tmp_path / "ssl.npz"
    convert.main(["--simclr", str(simclr_path), "--out", str(ssl_out)])
    ssl = P.load_perceptual_weights(ssl_out, "vgg_ssl")
    assert ssl.heads is None
    _tree_equal(ssl.vgg, bundle.vgg)
    with pytest.raises(ValueError, match="no LPIPS heads"):
        P.load_perceptual_weights(ssl_out, "lpips")


def test_converter_rejects_mismatched_heads():
    features, heads = _tiny_torch_state(np.random.default_rng(2))
    state = _as_lpips_module_state(features, heads)
    state["lins.2.model.1.weight"] = state["lins.2.model.1.weight"] + 1
    with pytest.raises(convert.CheckpointError, match="lin2 and lins.2"):
        convert.weights_from_state(state)
    wrong = dict(heads, **{"lin4.model.1.weight": np.zeros((1, 7, 1, 1), np.float32)})
    with pytest.raises(convert.CheckpointError, match="head 4 has 7 channels"):
        convert.weights_from_state(features, wrong)


def _images(rng, shape):
    """Random images in [-1, 1] (numpy: threefry kernels are slow to compile on CPU)."""
    return rng.uniform(-1, 1, shape).astype(np.float32)


def _random_weights(seed, stages, dtype=np.float32, stage5_bias=None):
    """Random VGG params (He-scaled) and heads, drawn with numpy: no eager Flax init to compile."""
    rng = np.random.default_rng(seed)
    params, cin = {}, 3
    for stage, widths in enumerate(stages):
        for index, width in enumerate(widths):
            kernel = rng.standard_normal((3, 3, cin, width)) * np.sqrt(2.0 / (9 * cin))
            params[conv_name(stage, index)] = {
                "kernel": jnp.asarray(kernel, dtype),
                "bias": jnp.asarray(0.05 * rng.standard_normal(width), dtype),
            }
            cin = width
    if stage5_bias is not None:  # push relu5_3 to all-zero feature vectors
        last = params[conv_name(4, len(stages[4]) - 1)]
        last["bias"] = jnp.full_like(last["bias"], stage5_bias)
    heads = tuple(jnp.asarray(rng.uniform(0, 0.1, widths[-1]), dtype) for widths in stages)
    shift = jnp.asarray(P.LPIPS_SHIFT, dtype)
    scale = jnp.asarray(P.LPIPS_SCALE, dtype)
    return P.PerceptualWeights(params, heads, shift, scale)


DISTANCES = {
    "lpips": lambda w, x, y: P.lpips_distance(w, x, y),
    "vgg_ssl": lambda w, x, y: P.vgg_ssl_distance(w, x, y),
    "multiscale_structural": lambda w, x, y: P.multiscale_structural_distance(x, y),
}


@pytest.mark.parametrize(
    "name, stage5_bias",
    # vgg_ssl runs with relu5_3 all zero: unit normalisation of a zero vector must keep the
    # gradient finite.
    [("lpips", None), ("vgg_ssl", -100.0), ("multiscale_structural", None)],
)
def test_gradients_match_finite_differences(name, stage5_bias):
    distance = DISTANCES[name]
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        weights = _random_weights(11, TINY_STAGES, jnp.float64, stage5_bias)
        x = jnp.asarray(_images(rng, (2, 16, 16, 3)), jnp.float64)
        y = jnp.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1)
        total = lambda x, y: jnp.sum(distance(weights, x, y) * jnp.array([1.0, 0.7]))
        # One compiled function serves the gradient, the shifted evaluations and x == y.
        value_and_grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))
        _, (grad_x, grad_y) = value_and_grad(x, y)
        eps = 1e-5
        for grad, arg in ((grad_x, 0), (grad_y, 1)):
            assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
            direction = jnp.asarray(rng.standard_normal(x.shape), jnp.float64)
            shifted = [(x, y), (x, y)]
            shifted[0] = tuple(a + eps * direction if i == arg else a for i, a in enumerate((x, y)))
            shifted[1] = tuple(a - eps * direction if i == arg else a for i, a in enumerate((x, y)))
            numeric = (value_and_grad(*shifted[0])[0] - value_and_grad(*shifted[1])[0]) / (2 * eps)
            analytic = jnp.vdot(grad, direction)
            np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-5)
        same_value, same_grads = value_and_grad(x, x)
        assert abs(float(same_value)) < 1e-12
        for grad in same_grads:
            assert bool(jnp.all(jnp.isfinite(grad)))
            assert float(jnp.abs(grad).max()) < 1e-6


def test_weight_free_loss_properties():
    loss = P.get_perceptual_loss(_config("multiscale_structural"))
    x = _images(np.random.default_rng(5), (3, 24, 20, 3))
    y = x.copy()
    y[1] *= 0.5
    y[2] += 0.01
    value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(lambda x, y: loss(x[None], y[None])[0])))
    value, grad = value_and_grad(x, y)
    assert value.shape == (3,)
    assert float(value[0]) == 0.0
    assert float(value[1]) > 0 and float(value[2]) > 0
    assert float(value[1]) > float(value[2])  # bigger change, bigger distance
    assert bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_array_equal(np.asarray(grad[0]), 0.0)
    assert float(jnp.max(jnp.abs(grad[1]))) > 0
    same, _ = value_and_grad(x, x)
    np.testing.assert_array_equal(np.asarray(same), 0.0)
    # Batched call agrees with the per-pair one.
    np.testing.assert_allclose(jax.jit(loss)(x, y), value, rtol=1e-6, atol=1e-9)


def test_standardized_weight_free_loss_ignores_channel_gain_and_offset():
    config = types.SimpleNamespace(
        loss=types.SimpleNamespace(name="multiscale_structural", standardize=True, num_scales=2)
    )
    loss = jax.jit(P.get_perceptual_loss(config))
    x = _images(np.random.default_rng(6), (2, 16, 16, 3))
    recoloured = x * np.array([0.3, 1.5, 0.8], np.float32) + np.array([0.2, -0.4, 0.1], np.float32)
    np.testing.assert_allclose(loss(x, recoloured), 0.0, atol=1e-5)
    plain = P.multiscale_structural_distance(jnp.asarray(x), jnp.asarray(recoloured))
    assert float(jnp.min(plain)) > 1e-2  # the plain distance sees the new colours
    moved = np.roll(x, 3, axis=2)  # but the standardized one still sees where things are
    assert float(jnp.min(loss(x, moved))) > 1e-2


def _config(name, weights=None):
    return types.SimpleNamespace(loss=types.SimpleNamespace(name=name, weights=weights))


@pytest.mark.parametrize(
    "name, hint", [("lpips", "vgg16-397923af.pth"), ("vgg_ssl", "simclr_vgg_phase150.pt")]
)
def test_missing_weights_error(tmp_path, name, hint):
    missing = tmp_path / "absent.npz"
    with pytest.raises(P.MissingWeightsError) as info:
        P.get_perceptual_loss(_config(name, str(missing)))
    message = str(info.value)
    assert str(missing) in message and hint in message
    assert "python -m gangealing_jax.convert.perceptual" in message
    if name == "lpips":
        assert "weights/v0.1/vgg.pth" in message
    with pytest.raises(P.MissingWeightsError, match="loss.weights is not set"):
        P.get_perceptual_loss(_config(name, None))
    with pytest.raises(ValueError, match="unknown perceptual loss"):
        P.get_perceptual_loss(_config("alexnet"))


def test_loss_from_config_jits_as_argument_and_shards(tmp_path):
    from gangealing_jax.convert.perceptual import save_perceptual_weights

    path = save_perceptual_weights(_random_weights(8, TINY_STAGES), tmp_path / "w")
    loss = P.get_perceptual_loss(_config("lpips", path))
    assert isinstance(loss, jax.tree_util.Partial)
    x = jnp.asarray(_images(np.random.default_rng(9), (8, 16, 16, 3)))
    y = jnp.flip(x, axis=2)
    # Reference: weights closed over (jit constants), unsharded.
    mean_loss = lambda loss, x, y: loss(x, y).mean()
    expected = jax.jit(jax.value_and_grad(functools.partial(mean_loss, loss)))(x, y)

    # Weights passed as a jit argument, batch sharded (two devices keep the compile short).
    assert len(jax.devices()) >= 2
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    batch = NamedSharding(mesh, PartitionSpec("data"))
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)
    step = jax.jit(jax.value_and_grad(mean_loss, argnums=1))
    value, grad = step(loss, xs, ys)
    assert grad.sharding.is_equivalent_to(batch, grad.ndim)
    np.testing.assert_allclose(value, expected[0], rtol=1e-5)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
    # Sharded convs may sum in another order: compare against the gradient's scale.
    assert_close(grad, expected[1], atol=1e-4 * float(jnp.abs(grad).max()), name="sharded grad")


def test_vgg_taps_shapes():
    net = VGG16(stages=TINY_STAGES)
    x = jnp.zeros((2, 33, 20, 3))
    params = _random_weights(0, TINY_STAGES).vgg
    taps = jax.jit(net.apply)({"params": params}, x)
    assert isinstance(taps, VGGFeatures)
    # torch MaxPool2d(2, 2) floors odd sizes: 33 -> 16 -> 8 -> 4 -> 2.
    heights = [t.shape[1] for t in taps]
    assert heights == [33, 16, 8, 4, 2]
    assert [t.shape[-1] for t in taps] == [s[-1] for s in TINY_STAGES]
