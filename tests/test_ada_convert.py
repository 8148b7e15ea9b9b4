"""NVIDIA pickles downstream: `convert` bundles, `load_generator`, the interface training drives."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.convert.__main__ import main as convert_main
from gangealing_jax.convert.ada_snapshot import load_ada_discriminator
from gangealing_jax.convert.bundle import bundle_kind
from gangealing_jax.convert.stylegan2 import load_generator
from gangealing_jax.errors import ConfigError
from gangealing_jax.models.discriminator_ada import AdaDiscriminator
from gangealing_jax.models.stylegan2_ada import AdaGenerator, AdaGeneratorConfig, make_generator
from gangealing_jax.training.gangealing_setup import check_trainable_generator, tracked_mean_w
from gangealing_jax.training.latent_init import init_congealing
from tests.golden import REPO_ROOT

PKL = REPO_ROOT.parent / "shared" / "golden_ada" / "ada_generator.pkl"


@pytest.fixture(scope="module")
def loaded():
    return load_generator(PKL)


def _images(config, variables, **kwargs):
    gen = make_generator(config)
    z = jax.random.normal(jax.random.PRNGKey(0), (2, config.z_dim))
    w = gen.apply(variables, z, method="map")
    ws = jnp.broadcast_to(w[:, None], (2, config.n_latent, w.shape[-1]))
    return gen.apply(variables, ws, method="synthesize", **kwargs)


def test_convert_writes_bundles_that_load_as_the_pickle(tmp_path, loaded, capsys):
    assert convert_main([str(PKL), str(tmp_path / "out")]) == 0
    assert "g_ema: ada_generator" in capsys.readouterr().out
    kinds = {m: bundle_kind(tmp_path / "out" / m) for m in ("g_ema", "g", "d")}
    assert kinds == {"g_ema": "ada_generator", "g": "ada_generator", "d": "ada_discriminator"}
    config, variables = load_generator(tmp_path / "out")  # the directory, module g_ema
    assert config == loaded[0]
    np.testing.assert_array_equal(
        _images(config, variables, noise_mode="const"), _images(*loaded, noise_mode="const")
    )
    d_config, d_vars = load_ada_discriminator(tmp_path / "out")
    assert d_config == load_ada_discriminator(PKL)[0]
    images = _images(config, variables, noise_mode="const")
    np.testing.assert_array_equal(
        AdaDiscriminator(d_config).apply(d_vars, images),
        AdaDiscriminator(d_config).apply(load_ada_discriminator(PKL)[1], images),
    )


def test_module_picks_the_snapshot_network(loaded):
    _, g_vars = load_generator(PKL, module="g")
    a = g_vars["params"]["mapping"]["fc0"]["weight"]
    b = loaded[1]["params"]["mapping"]["fc0"]["weight"]
    assert a.shape == b.shape and not np.allclose(a, b)  # G_ema is not G


def test_explicit_noises_follow_noise_shapes(loaded):
    config, variables = loaded
    shapes = config.noise_shapes()
    assert len(shapes) == sum(len(b.noise_layers()) for b in config.blocks)
    buffers = variables["buffers"]["synthesis"]
    noises = [
        buffers[f"b{b.resolution}"][name]["noise_const"]
        for b in config.blocks
        for name, spec in (("conv0", b.conv0), ("conv1", b.conv1))
        if spec is not None and spec.use_noise
    ]
    assert [n.shape for n in noises] == shapes
    const = _images(config, variables, noise_mode="const")
    np.testing.assert_allclose(_images(config, variables, noises=noises), const, atol=1e-6)
    assert np.abs(_images(config, variables, noise_mode="none") - const).max() > 1e-3


def test_truncation_centre_is_w_avg(loaded):
    config, variables = loaded
    gen = AdaGenerator(config)
    z = jax.random.normal(jax.random.PRNGKey(1), (3, config.z_dim))
    ws = gen.apply(variables, z, None, 0.0, method=AdaGenerator.map_ws)
    expected = np.broadcast_to(variables["buffers"]["w_avg"], ws.shape)
    np.testing.assert_allclose(ws, expected, atol=1e-6)
    np.testing.assert_array_equal(
        gen.apply(variables, method=AdaGenerator.mean_w)[0], expected[0, 0]
    )


def test_training_refuses_what_gangealing_cannot_drive(loaded):
    config = loaded[0]
    assert isinstance(config, AdaGeneratorConfig)
    check_trainable_generator(config, "x.pkl")  # unconditional RGB, z_dim == w_dim
    for change in ({"c_dim": 4}, {"z_dim": config.w_dim + 1}, {"img_channels": 1}):
        with pytest.raises(ConfigError, match="x.pkl"):
            check_trainable_generator(dataclasses.replace(config, **change), "x.pkl")


def test_congealing_starts_from_w_avg(loaded):
    config, variables = loaded
    w_avg = tracked_mean_w(config, variables)
    np.testing.assert_array_equal(w_avg, variables["buffers"]["w_avg"])
    init = init_congealing(
        make_generator(config), variables, jax.random.PRNGKey(0), ndirs=2, num_heads=1,
        num_pca_samples=256, mean_w=w_avg,
    )  # fmt: skip
    np.testing.assert_array_equal(init.lat_mean, w_avg[None])
    plain = init_congealing(
        make_generator(config), variables, jax.random.PRNGKey(0), ndirs=2, num_heads=1,
        num_pca_samples=256,
    )  # fmt: skip
    assert np.abs(plain.lat_mean - w_avg).max() > 1e-3  # the sample mean is another point
    np.testing.assert_allclose(np.abs(plain.directions), np.abs(init.directions), atol=1e-6)


def test_random_noise_comes_from_the_key(loaded):
    config, variables = loaded

    def draw(seed):
        return _images(config, variables, noise_mode="random", rngs={"noise": jax.random.key(seed)})

    first = draw(0)
    np.testing.assert_array_equal(first, draw(0))
    assert np.abs(first - draw(1)).max() > 1e-3
    assert np.abs(first - _images(config, variables, noise_mode="const")).max() > 1e-3
