"""The StyleGAN2 trainer's steps (training/gan.py) jitted for a device mesh, and one iteration.

The state is replicated and the real batch sharded over the mesh's 'data' axis; `train_iteration`
runs the steps of iteration `i` in the order and on the lazy schedule gan.py describes.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax

from gangealing_jax.training import parallel
from gangealing_jax.training.gan import (
    GANSetup,
    GANState,
    d_r1_step,
    d_step,
    ema_step,
    g_path_step,
    g_step,
)


class GANSteps(NamedTuple):
    """The steps jitted for one mesh: state replicated, real batch sharded over 'data'."""

    d: Any
    d_r1: Any
    g: Any
    g_path: Any
    ema: Any


@functools.lru_cache(maxsize=8)
def make_steps(
    setup: GANSetup, max_traces: int | None = None, fast_compile: bool = False
) -> GANSteps:
    """Jits every step for `setup.mesh` (cached: equal setups share the compiled steps).

    `max_traces=n` wraps each step in `chex.assert_max_traces(n)`, which raises when a step is
    traced more often (a silent recompile). chex counts per step function and process, so use it
    for one setup at a time (`chex.clear_trace_counter()` in between).
    `fast_compile` turns XLA's backend optimisations off: compiles about twice as fast and runs
    slower (for tests and short runs).
    """
    if setup.mesh is None:
        raise ValueError("GANSetup.mesh is needed to jit the steps (parallel.make_mesh())")
    parallel.check_batch_size(setup.batch, setup.mesh)
    rep = parallel.replicated(setup.mesh)
    data = parallel.batch_sharding(setup.mesh)
    compiler_options = {"xla_backend_optimization_level": 0} if fast_compile else None

    def jit(fn, with_batch: bool, with_metrics: bool = True):
        step_fn = fn

        @functools.wraps(step_fn)
        def fn(*args):
            return step_fn(*args, setup=setup)

        if max_traces is not None:
            fn = chex.assert_max_traces(fn, n=max_traces)
        return jax.jit(
            fn,
            in_shardings=(rep, data) if with_batch else (rep,),
            out_shardings=(rep, rep) if with_metrics else rep,
            donate_argnums=0,
            compiler_options=compiler_options,
        )

    return GANSteps(
        d=jit(d_step, True),
        d_r1=jit(d_r1_step, True),
        g=jit(g_step, False),
        g_path=jit(g_path_step, False),
        ema=jit(ema_step, False, with_metrics=False),
    )


def train_iteration(steps: GANSteps, setup: GANSetup, state: GANState, real, step: int):
    """One full iteration; `step` (host int) must equal state.step. Returns (state, metrics).

    `real` is the sharded uint8 batch. Metrics hold 'r1' only on R1 iterations and 'path',
    'path_length', 'mean_path_length' only on path-length iterations.
    """
    state, metrics = steps.d(state, real)
    if setup.r1 > 0 and step % setup.d_reg_every == 0:
        state, reg = steps.d_r1(state, real)
        metrics = {**metrics, **reg}
    state, g_metrics = steps.g(state)
    metrics = {**metrics, **g_metrics}
    if setup.path_regularize > 0 and step % setup.g_reg_every == 0:
        state, reg = steps.g_path(state)
        metrics = {**metrics, **reg}
    return steps.ema(state), metrics
