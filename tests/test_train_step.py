"""The GANgealing train step: sharded equals single-device, one trace, passes, EMA, schedules."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.losses.gangealing import (
    Frozen,
    ObjectiveSettings,
    gangealing_objective,
)
from gangealing_jax.losses.perceptual import multiscale_structural_distance
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stylegan2 import Generator, GeneratorConfig
from gangealing_jax.training.augment import PoseAugmentation
from gangealing_jax.training.gangealing_step import (
    OptimizerSettings,
    StepSettings,
    _per_device_gradients,
    init_state,
    make_optimizer,
    make_train_step,
    step_inputs,
    train_step,
    with_passes,
)
from gangealing_jax.training.parallel import make_mesh
from tests.tiny_models import tiny_stn_config

DISTANCE = jax.tree_util.Partial(multiscale_structural_distance)


NO_POSES = PoseAugmentation()


@functools.cache
def _models(num_heads: int):
    """The generator, its variables, the STN and its variables, built once per test run and
    initialised under jit: op by op, initialising them costs more than the steps the tests take."""
    generator = Generator(GeneratorConfig(size=16, style_dim=16, n_mlp=2, channels=(8,) * 3))
    gvars = jax.jit(lambda k: generator.init(k, jnp.zeros((1, 16)), noise_mode="const"))(
        jax.random.PRNGKey(0)
    )
    stn = STN(tiny_stn_config(flow_size=16, supersize=16, num_heads=num_heads))
    stn_vars = jax.jit(stn.init)(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))
    return generator, gvars, stn, stn_vars


def _setup(batch=8, grad_accum=1, num_heads=1, flips=False, augment=NO_POSES, equivariance=0.0,
           equivariance_every=1):  # fmt: skip
    generator, gvars, stn, stn_vars = _models(num_heads)
    stn_vars = jax.tree.map(jnp.copy, stn_vars)  # the step donates the state it is given
    d = generator.config.style_dim
    directions = jnp.eye(2, d)
    frozen = Frozen(gvars, directions, jnp.zeros((1, d)))
    params = {"stn": stn_vars, "congealing": {"coefficients": jnp.full((num_heads, 2), 0.1)}}
    opt_settings = OptimizerSettings(anneal_psi=4, period=2.0)
    optimizer = make_optimizer(opt_settings)
    settings = StepSettings(
        ObjectiveSettings(
            inject=3,
            flips=flips,
            tv_weight=10.0,
            equivariance_weight=equivariance,
            equivariance_every=equivariance_every,
        ),
        batch=batch,
        grad_accum=grad_accum,
        anneal_psi=4,
        augment=augment,
    )
    state = init_state(params, optimizer, jax.random.PRNGKey(7))
    return generator, stn, optimizer, settings, opt_settings, state, frozen


def _run(steps, mesh=None, **kw):
    generator, stn, optimizer, settings, opt_settings, state, frozen = _setup(**kw)
    step = make_train_step(generator, stn, optimizer, settings, opt_settings, mesh)
    history = []
    for _ in range(steps):
        state, metrics = step(state, frozen, DISTANCE)
        history.append(jax.device_get(metrics))
    return state, history


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_sharded_step_equals_single_device():
    assert len(jax.devices()) == 8, "conftest must provide 8 CPU devices"
    # Four devices with two images each: XLA's CPU backend crashes on some convolution gradients
    # with a per-device batch of one, and eight devices would only double the test's run time.
    # With random poses of G(w): they are drawn for the whole batch, then split like z. The
    # equivariance term over every other image: each device's share holds a multiple of two rows,
    # so the devices together score the images a single device does.
    kw = dict(batch=8, augment=PoseAugmentation(rotation_deg=20.0, log_scale=0.2, translation=0.2),
              equivariance=1.0, equivariance_every=2)  # fmt: skip
    single, hist_single = _run(2, mesh=make_mesh(jax.devices()[:1]), **kw)
    sharded, hist_sharded = _run(2, mesh=make_mesh(jax.devices()[:4]), **kw)
    assert all(h["equivariance"] > 0 for h in hist_single)
    _assert_trees_close(jax.device_get(single.params), jax.device_get(sharded.params))
    _assert_trees_close(hist_single, hist_sharded)


def test_step_traces_once_follows_schedules_and_updates_everything():
    generator, stn, optimizer, settings, opt_settings, state, frozen = _setup()
    chex.clear_trace_counter()

    @chex.assert_max_traces(n=1)
    def traced_step(state, frozen, distance):
        return train_step(
            state, frozen, distance, generator=generator, stn=stn, optimizer=optimizer,
            settings=settings, optimizer_settings=opt_settings,
        )  # fmt: skip

    step = jax.jit(traced_step, donate_argnums=(0,))
    before = jax.device_get(state.params)
    history = []
    for _ in range(6):
        state, metrics = step(state, frozen, DISTANCE)
        history.append(jax.device_get(metrics))
    with pytest.raises(AssertionError, match="trace"):  # a changed shape is a loud error
        step(state.replace(step=state.step.astype(jnp.float32)), frozen, DISTANCE)
    assert int(state.step) == 6
    # psi anneals over anneal_psi=4 iterations; learning rates are held until then
    psi = [float(m["psi"]) for m in history]
    assert psi[0] < 1.0 and psi[3] == pytest.approx(0.0, abs=1e-7) and psi[5] == 0.0
    assert all(a >= b for a, b in zip(psi, psi[1:], strict=False))
    lrs = [float(m["lr_stn"]) for m in history]
    assert lrs[:5] == pytest.approx([1e-3] * 5)
    assert lrs[5] < 1e-3
    after = jax.device_get(state.params)
    assert not np.allclose(
        before["congealing"]["coefficients"], after["congealing"]["coefficients"]
    )
    moved = jax.tree.leaves(
        jax.tree.map(lambda a, b: bool(np.any(a != b)), before["stn"], after["stn"])
    )
    assert all(moved), "every STN parameter receives an update"
    for value in metrics.values():
        assert np.isfinite(value)
    # EMA lags the parameters
    ema_minus = jax.tree.map(
        lambda e, p: float(np.max(np.abs(e - p))), state.ema_stn, state.params["stn"]
    )
    assert max(jax.tree.leaves(ema_minus)) > 0


def test_passes_split_the_batch_without_changing_its_gradients():
    """Two passes of 2 images (looped or scanned) give the one-pass gradients of the same 4 images:
    z, noise and poses are drawn for the whole batch, then split."""
    poses = PoseAugmentation(rotation_deg=20.0, log_scale=0.2, translation=0.2)
    generator, stn, _, settings, _, state, frozen = _setup(batch=4, augment=poses)
    objective = functools.partial(
        gangealing_objective, generator=generator, stn=stn, settings=settings.objective
    )

    def inputs(passes):
        return step_inputs(state, generator, stn, dataclasses.replace(settings, grad_accum=passes))

    one_pass, two_passes = inputs(1), inputs(2)
    for a, b in zip(jax.tree.leaves(one_pass), jax.tree.leaves(two_passes), strict=True):
        np.testing.assert_array_equal(np.reshape(a, np.shape(b)), b)

    def gradients(drawn, loop_max):
        fn = functools.partial(
            _per_device_gradients, objective=objective, axis_name=None, loop_max=loop_max
        )
        return jax.device_get(jax.jit(fn)(state.params, frozen, DISTANCE, *drawn))

    whole = gradients(one_pass, 8)
    looped, scanned = gradients(two_passes, 8), gradients(two_passes, 0)
    _assert_trees_close(looped, scanned, rtol=1e-5, atol=1e-7)
    # Summed in another order: rounding differs by ~1e-6 on entries of ~1e-1.
    _assert_trees_close(looped, whole, rtol=1e-4, atol=5e-6)
    assert max(abs(x).max() for x in jax.tree.leaves(whole[0])) > 1e-3


def test_make_train_step_takes_the_configured_passes():
    generator, stn, optimizer, settings, opt_settings, state, frozen = _setup(batch=4)
    assert with_passes(settings, stn, None).grad_accum == 1  # 16x16 images: one pass on CPU
    split = dataclasses.replace(settings, images_per_pass=1)
    assert with_passes(split, stn, make_mesh(jax.devices()[:2])).grad_accum == 2
    # The step the function builds unrolls one objective per pass.
    convolutions = []
    for settings_ in (settings, split):
        step = make_train_step(generator, stn, optimizer, settings_, opt_settings)
        text = step.lower(jax.tree.map(jnp.copy, state), frozen, DISTANCE).as_text()
        convolutions.append(text.count("stablehlo.convolution"))
    assert convolutions[0] > 0 and convolutions[1] == 4 * convolutions[0]


def test_clusters_with_flips_step():
    state, history = _run(1, batch=4, num_heads=2, flips=True)
    assert np.isfinite(history[-1]["loss"])
    coefficients = np.asarray(state.params["congealing"]["coefficients"])
    assert coefficients.shape == (2, 2)
    # A head that no image picked this step receives no gradient: ask only that c moved.
    assert np.any(coefficients != np.float32(0.1))
