"""The GANgealing train state, optimizer and the pure, data-parallel train step.

One optax optimizer updates one pytree `{'stn': ..., 'congealing': ...}`: Adam(0.9, 0.999, 1e-8)
with separate learning rates, both held while psi anneals and then following decaying cosine warm
restarts. Gradient accumulation runs inside the step (a loop, or a scan for many micro-batches),
so one call is one reference iteration: schedules, EMA and checkpoints count iterations, whatever
the device memory. How many passes a step takes (training/passes.py) does not change its result.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import shard_map
from jax.sharding import Mesh, PartitionSpec

from gangealing_jax.errors import ConfigError
from gangealing_jax.losses.gangealing import (
    Frozen,
    ObjectiveSettings,
    draw_noise,
    gangealing_objective,
    resize_to_flow,
)
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stylegan2 import Generator
from gangealing_jax.training.augment import PoseAugmentation, random_poses
from gangealing_jax.training.collapse import KEYS as COLLAPSE_KEYS
from gangealing_jax.training.collapse import warp_statistics
from gangealing_jax.training.parallel import DATA_AXIS, replicated
from gangealing_jax.training.passes import passes_per_step
from gangealing_jax.training.schedules import make_lr_schedule, psi_at_iteration


class GANgealingState(flax.struct.PyTreeNode):
    step: jnp.ndarray  # () int32, optimizer steps taken
    params: dict  # {'stn': STN variables, 'congealing': {'coefficients': (heads, ndirs)}}
    opt_state: Any
    ema_stn: dict  # EMA of params['stn']
    rng: jnp.ndarray  # (2,) uint32 base key of the run


@dataclasses.dataclass(frozen=True)
class StepSettings:
    objective: ObjectiveSettings
    batch: int  # global images per optimizer step
    grad_accum: int = 1  # forward/backward passes per step (make_train_step may add more)
    images_per_pass: int = 0  # per device; 0 = automatic (training/passes.py)
    anneal_psi: int = 150_000
    anneal_fn: str = "cosine"
    ema_decay: float = 0.5 ** (32 / 10_000)
    augment: PoseAugmentation = PoseAugmentation()  # random poses of G(w), growing as psi anneals


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    stn_lr: float = 1e-3
    ll_lr: float = 1e-2
    anneal_psi: int = 150_000
    period: float = 37_500.0
    tm: int = 2
    decay: float = 0.9
    freeze_ll: bool = False


def make_optimizer(s: OptimizerSettings) -> optax.GradientTransformation:
    def adam(lr):
        schedule = make_lr_schedule(
            lr, anneal_psi=s.anneal_psi, period=s.period, t_mult=s.tm, decay=s.decay
        )
        return optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)

    congealing = optax.set_to_zero() if s.freeze_ll else adam(s.ll_lr)
    return optax.multi_transform(
        {"stn": adam(s.stn_lr), "congealing": congealing},
        {"stn": "stn", "congealing": "congealing"},
    )


def learning_rates(s: OptimizerSettings, step) -> dict:
    """The learning rates the update with index `step` uses (for logging)."""
    kw = dict(anneal_psi=s.anneal_psi, period=s.period, t_mult=s.tm, decay=s.decay)
    return {
        "lr_stn": make_lr_schedule(s.stn_lr, **kw)(step),
        "lr_ll": 0.0 if s.freeze_ll else make_lr_schedule(s.ll_lr, **kw)(step),
    }


def init_state(params: dict, optimizer: optax.GradientTransformation, rng: jax.Array):
    # Strongly typed leaves: a weakly typed input would make the second call of the step retrace.
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), params)
    return GANgealingState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_stn=jax.tree.map(jnp.copy, params["stn"]),
        rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
    )


# Up to this many micro-batches are accumulated by an unrolled Python loop, beyond it by a scan.
# Inside a scan body XLA:CPU picks slower layouts for the LPIPS input-gradient convolutions (the
# step took 1.5x as long even at grad_accum=1); unrolling costs compile time linear in the count.
LOOP_MAX_MICRO_BATCHES = 8

_METRIC_NAMES = (
    "loss",
    "perceptual",
    "tv",
    "identity",
    "equivariance",
    "symmetry",
    "mirror",
    "zoom_out",
)


def _per_device_gradients(
    params, frozen, distance, z, noise, psi, augment, *, objective, axis_name: str | None,
    loop_max: int = LOOP_MAX_MICRO_BATCHES,
):  # fmt: skip
    """Mean gradients and metrics over the micro-batches (and devices, when `axis_name` is set).

    z: (accum, micro, D); noise: GeneratorNoise whose arrays lead with (accum, rows, ...);
    augment: None or (accum, micro, 2, 3) poses applied to G(w). `loop_max`: the largest
    accumulation count unrolled (see LOOP_MAX_MICRO_BATCHES); both forms give the same result.
    """
    accum = z.shape[0]

    def loss_fn(p, z_micro, noise_micro, augment_micro):
        terms = objective(p, frozen, z_micro, noise_micro, psi, distance, augment_micro)
        return terms.total, terms

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro_step(inputs):
        (_, terms), grads = grad_fn(params, *inputs)
        metrics = {
            name: getattr(terms, "total" if name == "loss" else name) for name in _METRIC_NAMES
        }
        # Read by the collapse monitor, of the unmirrored rows (image, head), as many as targets.
        metrics.update(
            warp_statistics(
                terms.grid[: terms.target.shape[0]],
                terms.aligned_pred[: terms.target.shape[0]],
                resize_to_flow(terms.unaligned, terms.aligned_pred.shape[1]),
            )
        )
        return grads, metrics

    inputs = (z, noise, augment)
    if accum <= loop_max:
        grads, metrics = micro_step(jax.tree.map(lambda x: x[0], inputs))
        for i in range(1, accum):
            more = micro_step(jax.tree.map(lambda x, i=i: x[i], inputs))
            grads, metrics = jax.tree.map(jnp.add, (grads, metrics), more)
    else:

        def accumulate(carry, micro_inputs):
            return jax.tree.map(jnp.add, carry, micro_step(micro_inputs)), None

        zeros = (
            jax.tree.map(jnp.zeros_like, params),
            {k: jnp.zeros(()) for k in _METRIC_NAMES + COLLAPSE_KEYS},
        )
        (grads, metrics), _ = jax.lax.scan(accumulate, zeros, inputs)
    if accum > 1:
        grads, metrics = jax.tree.map(lambda g: g / accum, (grads, metrics))
    if axis_name is not None:  # every device holds an equal share of the batch
        grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
    return grads, metrics


def step_inputs(state: GANgealingState, generator: Generator, stn: STN, settings: StepSettings):
    """(z, noise, psi, augment) of the step `state.step`, laid out as _per_device_gradients takes
    them: z (accum, micro, D), noise leading with (accum, rows), augment None or (accum, micro, 2, 3).
    """
    key = jax.random.fold_in(state.rng, state.step)
    z_key, noise_key = jax.random.split(key)
    accum = settings.grad_accum
    micro = settings.batch // accum
    heads = stn.config.num_heads
    # Drawn for the whole batch, then split into passes: the pass count changes no sample. (A
    # normal or uniform draw of shape (accum, micro, ...) is that of (batch, ...), reshaped.)
    z = jax.random.normal(z_key, (accum, micro, generator.config.style_dim))
    # The first key of a one-way split: the key one-pass steps have always drawn noise from.
    noise = draw_noise(generator, jax.random.split(noise_key, 1)[0], settings.batch, heads)
    noise = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), noise)
    psi = psi_at_iteration(state.step + 1, settings.anneal_psi, settings.anneal_fn)
    augment = None
    if settings.augment.enabled:
        # A key of its own (not a third split) keeps z and noise those of a run without poses.
        augment_key = jax.random.fold_in(key, 2)
        augment = random_poses(augment_key, (accum, micro), settings.augment, 1.0 - psi)
    return z, noise, psi, augment


def train_step(
    state: GANgealingState,
    frozen: Frozen,
    distance,
    *,
    generator: Generator,
    stn: STN,
    optimizer: optax.GradientTransformation,
    settings: StepSettings,
    optimizer_settings: OptimizerSettings,
    mesh: Mesh | None = None,
):
    """One optimizer step -> (new state, metrics dict of scalars).

    z and the generator noise are drawn for the whole global batch first, so the result does not
    depend on how many devices share the work; with a mesh, each device then computes the
    gradients of its rows (shard_map) and they are averaged over the 'data' axis.
    """
    z, noise, psi, augment = step_inputs(state, generator, stn, settings)
    objective = functools.partial(
        gangealing_objective, generator=generator, stn=stn, settings=settings.objective
    )
    if mesh is None:
        grads, metrics = _per_device_gradients(
            state.params, frozen, distance, z, noise, psi, augment,
            objective=objective, axis_name=None,
        )  # fmt: skip
    else:
        rows = PartitionSpec(None, DATA_AXIS)
        per_device = shard_map(
            functools.partial(_per_device_gradients, objective=objective, axis_name=DATA_AXIS),
            mesh=mesh,
            in_specs=(
                PartitionSpec(),
                PartitionSpec(),
                PartitionSpec(),
                rows,
                rows,
                PartitionSpec(),
                rows,
            ),
            out_specs=(PartitionSpec(), PartitionSpec()),
            check_vma=False,
        )
        grads, metrics = per_device(state.params, frozen, distance, z, noise, psi, augment)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = settings.ema_decay
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_stn, params["stn"])
    metrics["psi"] = psi
    metrics.update(learning_rates(optimizer_settings, state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_stn=ema)
    return new_state, metrics


def with_passes(settings: StepSettings, stn: STN, mesh: Mesh | None) -> StepSettings:
    """`settings` with grad_accum raised to the passes the step takes on `mesh`'s devices."""
    devices = jax.devices()[:1] if mesh is None else list(mesh.devices.flat)
    objective = settings.objective
    passes = passes_per_step(
        batch=settings.batch,
        grad_accum=settings.grad_accum,
        devices=len(devices),
        flow_size=stn.config.flow_size,
        images_per_pass=settings.images_per_pass,
        platform=devices[0].platform,
        multiple_of=objective.equivariance_every if objective.equivariance_weight else 1,
    )
    return dataclasses.replace(settings, grad_accum=passes)


def make_train_step(
    generator: Generator,
    stn: STN,
    optimizer: optax.GradientTransformation,
    settings: StepSettings,
    optimizer_settings: OptimizerSettings,
    mesh: Mesh | None = None,
):
    """The jitted step `(state, frozen, distance) -> (state, metrics)`; the state is donated.

    With a mesh, each micro-batch is split over its 'data' axis and everything else replicated.
    The passes per step follow `settings.images_per_pass` (see training/passes.py).
    """
    if settings.batch % settings.grad_accum:
        raise ConfigError(
            f"batch {settings.batch} is not divisible by grad_accum {settings.grad_accum}"
        )
    shardings = {}
    if mesh is not None:
        micro = settings.batch // settings.grad_accum
        if micro % mesh.devices.size:
            raise ConfigError(
                f"micro-batch {micro} (batch / grad_accum) is not divisible by the "
                f"{mesh.devices.size} devices; use a multiple of {mesh.devices.size}"
            )
        rep = replicated(mesh)
        shardings = dict(in_shardings=rep, out_shardings=rep)
    settings = with_passes(settings, stn, mesh)

    def step(state, frozen, distance):
        return train_step(
            state,
            frozen,
            distance,
            generator=generator,
            stn=stn,
            optimizer=optimizer,
            settings=settings,
            optimizer_settings=optimizer_settings,
            mesh=mesh,
        )

    return jax.jit(step, donate_argnums=(0,), **shardings)
