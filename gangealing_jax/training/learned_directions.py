"""Learning interpretable directions of a frozen generator (Voynov & Babenko 2020), in W.

Every step draws w = G.map(z), a direction index k and a signed shift eps, renders the pair
(G(w), G(w + eps * s * d_k)) in the chosen W+ layers (the checkpoint's fixed noise, so the
latent is all that differs), and trains the direction matrix and the reconstructor together:
cross-entropy of the reconstructor's logits for k plus `shift_weight` times the L1 error of its
eps. Directions the reconstructor can tell apart are ones that change the image in distinct
ways. `s` is the root-mean-square spread of W per dimension, so shifts mean the same for any
generator. The generator's weights are an argument that is never differentiated; gradients flow
through it into the directions.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gangealing_jax.models.direction_discovery import (
    DirectionMatrix,
    Reconstructor,
    ReconstructorConfig,
)
from gangealing_jax.models.stylegan2 import Generator, broadcast_w
from gangealing_jax.training.parallel import DATA_AXIS, replicated


class FrozenGenerator(NamedTuple):
    variables: dict  # generator variables (never differentiated)
    w_scale: jnp.ndarray  # () RMS spread of mapped w per dimension: the unit of a shift


@dataclasses.dataclass(frozen=True)
class DiscoverySettings:
    num_directions: int = 16  # K
    constraint: str = "orthonormal"  # unit | orthonormal rows
    layers: tuple[int, int] = (0, 0)  # W+ layers [start, stop) shifted; (0, 0) = every layer
    batch: int = 32  # global pairs per step
    shift_scale: float = 6.0  # |eps| <= shift_scale (in units of w_scale)
    min_shift: float = 0.5  # |eps| >= min_shift: a shift too small to see teaches nothing
    shift_weight: float = 0.25  # weight of the L1 shift regression
    lr: float = 1e-4  # reconstructor learning rate (Adam)
    directions_lr: float = 1e-4  # direction-matrix learning rate (Adam)


class DiscoveryState(flax.struct.PyTreeNode):
    step: jnp.ndarray  # () int32 optimizer steps taken
    params: dict  # {'directions': {'params': {'raw': (K, D)}}, 'reconstructor': variables}
    opt_state: Any
    rng: jnp.ndarray  # (2,) uint32 base key of the run


def make_optimizer(settings: DiscoverySettings) -> optax.GradientTransformation:
    """One Adam over the whole pytree, with a learning rate per part."""
    return optax.multi_transform(
        {
            "directions": optax.adam(settings.directions_lr),
            "reconstructor": optax.adam(settings.lr),
        },
        {"directions": "directions", "reconstructor": "reconstructor"},
    )


def init_state(
    generator: Generator,
    settings: DiscoverySettings,
    config: ReconstructorConfig,
    optimizer,
    key: jax.Array,
) -> DiscoveryState:
    dir_key, rec_key, run_key = jax.random.split(key, 3)
    matrix = DirectionMatrix(
        settings.num_directions, generator.config.style_dim, settings.constraint
    )
    size = generator.config.size
    image = jnp.zeros((1, size, size, 3))
    params = {
        "directions": jax.jit(matrix.init)(dir_key),
        "reconstructor": jax.jit(Reconstructor(config).init)(rec_key, image, image),
    }
    rng = jax.random.key_data(run_key)
    return DiscoveryState(jnp.zeros((), jnp.int32), params, optimizer.init(params), rng)


def directions_of(params, generator: Generator, settings: DiscoverySettings):
    """(K, D) constrained directions held in the state's params."""
    matrix = DirectionMatrix(
        settings.num_directions, generator.config.style_dim, settings.constraint
    )
    return matrix.apply(params["directions"])


class Pairs(NamedTuple):
    z: jnp.ndarray  # (N, D)
    index: jnp.ndarray  # (N,) int32 direction k
    eps: jnp.ndarray  # (N,) signed shift, in units of w_scale


def draw_pairs(key: jax.Array, settings: DiscoverySettings, dim: int, batch: int) -> Pairs:
    z_key, k_key, size_key, sign_key = jax.random.split(key, 4)
    z = jax.random.normal(z_key, (batch, dim))
    index = jax.random.randint(k_key, (batch,), 0, settings.num_directions)
    size = jax.random.uniform(
        size_key, (batch,), minval=settings.min_shift, maxval=settings.shift_scale
    )
    sign = jnp.where(jax.random.bernoulli(sign_key, 0.5, (batch,)), 1.0, -1.0)
    return Pairs(z, index, size * sign)


def render_pairs(
    directions,
    frozen: FrozenGenerator,
    pairs: Pairs,
    *,
    generator: Generator,
    layers: tuple[int, int],
):
    """(G(w), G(w + eps * s * d_k)), each (N, H, W, 3); differentiable in `directions`."""
    gvars = jax.lax.stop_gradient(frozen.variables)
    n_latent = generator.config.n_latent
    w = jax.lax.stop_gradient(generator.apply(gvars, pairs.z, method=Generator.map))
    start, stop = layers if layers[1] > 0 else (0, n_latent)
    shift = (pairs.eps * frozen.w_scale)[:, None] * directions[pairs.index]  # (N, D)
    layer = jnp.arange(n_latent)[None, :, None]
    inside = (layer >= start) & (layer < stop)  # (1, L, 1)
    w_plus = broadcast_w(w, n_latent)  # (N, L, D)
    shifted = w_plus + jnp.where(inside, shift[:, None, :], 0.0)
    both = jnp.concatenate([w_plus, shifted])  # one synthesis call for the two halves
    images = generator.apply(gvars, both, noise_mode="const", method=Generator.synthesize)
    return images[: w.shape[0]], images[w.shape[0] :]


def discovery_loss(params, frozen, pairs, *, generator, reconstructor, settings):
    """(loss, metrics) of one batch of pairs."""
    directions = directions_of(params, generator, settings)
    x, y = render_pairs(directions, frozen, pairs, generator=generator, layers=settings.layers)
    logits, shift = reconstructor.apply(params["reconstructor"], x, y)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, pairs.index).mean()
    shift_error = jnp.abs(shift - pairs.eps).mean()
    loss = cross_entropy + settings.shift_weight * shift_error
    accuracy = jnp.mean(jnp.argmax(logits, axis=1) == pairs.index)
    metrics = {
        "loss": loss,
        "cross_entropy": cross_entropy,
        "shift_error": shift_error,
        "accuracy": accuracy,
    }
    return loss, metrics


def train_step(
    state: DiscoveryState,
    frozen: FrozenGenerator,
    *,
    generator: Generator,
    reconstructor: Reconstructor,
    optimizer,
    settings: DiscoverySettings,
    mesh: Mesh | None = None,
):
    """One optimizer step -> (new state, metrics). The global batch is drawn first and then
    split over the mesh, so the result does not depend on the number of devices."""
    key = jax.random.fold_in(state.rng, state.step)
    pairs = draw_pairs(key, settings, generator.config.style_dim, settings.batch)
    if mesh is not None:
        pairs = jax.lax.with_sharding_constraint(
            pairs, NamedSharding(mesh, PartitionSpec(DATA_AXIS))
        )
    grad_fn = jax.value_and_grad(
        functools.partial(
            discovery_loss, generator=generator, reconstructor=reconstructor, settings=settings
        ),
        has_aux=True,
    )
    (_, metrics), grads = grad_fn(state.params, frozen, pairs)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(generator, reconstructor, optimizer, settings, mesh: Mesh | None = None):
    """The jitted `(state, frozen) -> (state, metrics)`; the state is donated."""
    shardings = {}
    if mesh is not None:
        shardings = dict(in_shardings=replicated(mesh), out_shardings=replicated(mesh))
    step = functools.partial(
        train_step,
        generator=generator,
        reconstructor=reconstructor,
        optimizer=optimizer,
        settings=settings,
        mesh=mesh,
    )
    return jax.jit(step, donate_argnums=(0,), **shardings)


@functools.partial(jax.jit, static_argnames=("generator", "reconstructor", "settings", "batch"))
def evaluate(params, frozen, key, *, generator, reconstructor, settings, batch: int):
    """Metrics of the current parts on `batch` fresh pairs (no update)."""
    pairs = draw_pairs(key, settings, generator.config.style_dim, batch)
    _, metrics = discovery_loss(
        params, frozen, pairs, generator=generator, reconstructor=reconstructor, settings=settings
    )
    return metrics
