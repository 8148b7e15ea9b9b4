"""The `compute` section beyond GANgealing training: the GAN trainer and the applications build
their conv nets with it. Its float32 default computes exactly what the modules' own default
(ops/precision.FLOAT32) does; bfloat16 stays close and really convolves in bfloat16."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.gan import test as gan_test_config
from gangealing_jax.apps import congeal
from gangealing_jax.apps.model import load_model
from gangealing_jax.apps.points import forward_with_flip
from gangealing_jax.errors import ConfigError
from gangealing_jax.models.discriminator import Discriminator
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stylegan2 import Generator
from gangealing_jax.ops.precision import FLOAT32, Policy
from gangealing_jax.training import gan, gan_loop, parallel
from gangealing_jax.training.config_checks import check_gan_config
from tests.tiny_models import identity_model_bundle

BF16_EPS = float(jnp.finfo(jnp.bfloat16).eps)  # 2**-7: the spacing of bfloat16 at 1


def _bf16_convolutions(text: str) -> list[str]:
    """The convolutions of a lowered program whose operands are bfloat16."""
    return [
        line
        for line in text.splitlines()
        if "stablehlo.convolution" in line and "xbf16>" in line.rsplit(": (", 1)[-1]
    ]


# --- GAN trainer -------------------------------------------------------------------------------


def _gan_config(dtype: str = "float32"):
    c = gan_test_config.get_config()
    c.compute.dtype = dtype
    return c


@functools.lru_cache(maxsize=4)  # one compilation per setup, shared by the tests
def _iteration(setup: gan.GANSetup):
    """A discriminator step, then a generator step: (losses and scores, new G and D params)."""

    @jax.jit
    def run(state, real):
        state, d_metrics = gan.d_step(state, real, setup=setup)
        state, g_metrics = gan.g_step(state, setup=setup)
        return {**d_metrics, **g_metrics}, (state.g_params, state.d_params)

    return run


@pytest.fixture(scope="module")
def gan_inputs():
    mesh = parallel.make_mesh(jax.devices()[:1])
    config = _gan_config()
    setup = gan_loop.build_setup(config, mesh)
    state = jax.device_get(gan_loop.init_replicated(setup, jax.random.PRNGKey(3)))
    res = config.model.resolution
    real = np.random.default_rng(0).integers(0, 256, (config.batch, res, res, 3), np.uint8)
    return mesh, setup, state, real


def test_gan_float32_default_is_the_modules_default(gan_inputs):
    _, setup, state, real = gan_inputs
    assert setup.generator.policy == setup.discriminator.policy == Policy(matmul_precision="auto")
    # What the trainer built before it read a compute section: the modules' own default.
    plain = dataclasses.replace(
        setup,
        generator=Generator(setup.generator.config),
        discriminator=Discriminator(setup.discriminator.config),
    )
    assert plain.generator.policy is FLOAT32
    # The same program, op for op: the same results bit for bit, without compiling it twice.
    got, want = (_iteration(s).lower(state, real).as_text() for s in (setup, plain))
    assert got == want and "stablehlo.convolution" in got


def test_gan_bfloat16_step_stays_close_and_convolves_in_bfloat16(gan_inputs):
    mesh, setup, state, real = gan_inputs
    bf16_setup = gan_loop.build_setup(_gan_config("bfloat16"), mesh)
    assert bf16_setup.generator.policy.dtype == bf16_setup.discriminator.policy.dtype == "bfloat16"
    step = _iteration(bf16_setup)
    text = step.lower(state, real).as_text()
    assert len(_bf16_convolutions(text)) >= 4  # G's and D's convolutions, forward and backward
    assert not _bf16_convolutions(_iteration(setup).lower(state, real).as_text())

    want, _ = _iteration(setup)(state, real)
    got, (g_params, d_params) = step(state, real)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves((g_params, d_params)))
    # Each of the ~10 layers between z and a loss rounds its inputs and its result to 8 bits
    # (relative error eps / 2 each, partly cancelling): a loss of magnitude ~1 moves by about
    # eps / 5 (measured: 0.0016 at most), held to 2 eps.
    for name in ("d_loss", "g_loss", "real_score", "fake_score"):
        assert got[name].dtype == jnp.float32
        tol = 2 * BF16_EPS * max(1.0, abs(float(want[name])))
        assert abs(float(got[name]) - float(want[name])) < tol, (name, got[name], want[name])
    assert any(float(got[k]) != float(want[k]) for k in want)  # bfloat16 changed something


def test_gan_config_check_refuses_a_bad_compute_dtype():
    config = _gan_config("float16")
    with pytest.raises(ConfigError, match=r"--config.compute.dtype='float16'.*bfloat16"):
        check_gan_config(config, 1)


# --- applications ------------------------------------------------------------------------------


def _perturbed(model):
    """Every STN weight moved by 0.05 N(0, 1): a non-identity warp that depends on every layer."""
    leaves, tree = jax.tree_util.tree_flatten(model.variables)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    noisy = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return model._replace(variables=jax.tree_util.tree_unflatten(tree, noisy))


def _record_compute(bundle, compute: dict | None):
    meta_path = bundle / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["config"].pop("compute", None)
    if compute is not None:
        meta["config"]["compute"] = compute
    meta_path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def app_inputs(tmp_path_factory):
    bundle = identity_model_bundle(tmp_path_factory.mktemp("run") / "model")
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), np.uint8)
    return bundle, images


def _lowered(model, images, flips=False):
    """The program of the STN forward the applications run (with flip inference if asked)."""
    x = jnp.asarray(images, jnp.float32) / 127.5 - 1

    def forward(variables, x):
        if flips:
            return forward_with_flip(model.stn, variables, x, padding_mode="border").image
        return model.stn.apply(variables, x, **model.forward_settings).image

    return jax.jit(forward).lower(model.variables, x).as_text()


def _congeal(model, images):
    summary = congeal.congeal_dataset(model, images, n_mean=4, n_grid=4, batch_size=4)
    return summary.grid_images, summary.flow_scores


def test_apps_use_the_recorded_policy_and_float32_is_unchanged(app_inputs):
    bundle, images = app_inputs
    # No compute section anywhere (older exports): float32 at the backend's precision.
    _record_compute(bundle, None)
    default = load_model(bundle)
    assert default.policy == Policy(matmul_precision="auto")
    plain = default._replace(stn=STN(default.stn.config))  # what the apps built before
    # The same program, op for op (flips, mirror averaging and all): the same results.
    got, want = (_lowered(m, images, flips=True) for m in (default, plain))
    assert got == want and "stablehlo.convolution" in got
    # An older export takes the section of its training work directory's config.json ...
    (bundle.parent / "config.json").write_text(json.dumps({"compute": {"dtype": "bfloat16"}}))
    assert load_model(bundle).policy.dtype == "bfloat16"
    # ... the export's own record comes first, and the caller's policy before both.
    _record_compute(bundle, {"dtype": "float32", "matmul_precision": "high", "kernels": "xla"})
    assert load_model(bundle).policy == Policy("float32", "high", "xla")
    assert load_model(bundle, policy=FLOAT32).policy is FLOAT32
    (bundle.parent / "config.json").unlink()


def test_apps_bfloat16_inference_stays_close_and_convolves_in_bfloat16(app_inputs):
    bundle, images = app_inputs
    _record_compute(bundle, {"dtype": "bfloat16", "matmul_precision": "auto", "kernels": "auto"})
    model = _perturbed(load_model(bundle))
    assert model.policy.dtype == "bfloat16"
    reference = _perturbed(load_model(bundle, policy=FLOAT32))
    assert _bf16_convolutions(_lowered(model, images))
    assert not _bf16_convolutions(_lowered(reference, images))
    (grid, scores), (grid32, scores32) = _congeal(model, images), _congeal(reference, images)
    assert grid.dtype == np.float32 and not np.array_equal(grid, grid32)
    # The warp moves pixels by a flow whose ~8 trunk layers each round to 8 bits; images are in
    # [-1, 1], so a resampled pixel moves by a fraction of eps times the local image gradient
    # (measured: 0.0023 on average; flow scores 0.1% apart), held to 2 eps.
    assert np.abs(grid - grid32).mean() < 2 * BF16_EPS
    np.testing.assert_allclose(scores, scores32, rtol=2 * BF16_EPS)
