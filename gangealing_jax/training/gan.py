"""StyleGAN2 training steps as pure functions, with the reference trainer's losses and schedule.

One training iteration `i` (0-based, = `state.step` before it) runs, in order:
  d_step       non-saturating logistic loss on fresh fakes and real images; with a decoder on
               the discriminator (GGDR), plus ggdr_weight * the cosine distance between its
               prediction from each fake and the generator's feature map that made the fake;
  d_r1_step    when i % d_reg_every == 0: lazy R1 penalty on the same real images,
               weighted r1 / 2 * d_reg_every;
  g_step       non-saturating loss of the generator;
  g_path_step  when path_regularize > 0 and i % g_reg_every == 0: lazy path-length penalty on
               batch // path_batch_shrink fakes, weighted path_regularize * g_reg_every;
  ema_step     EMA of the generator parameters, then step += 1.
Fakes use style mixing: with probability `mixing` a batch takes its W+ layers [0, k) from one z and
[k, n_latent) from another, k uniform in 1..n_latent-1; each generator call draws its own noise.
Lazily regularised networks use Adam with lr * c / (c + 1) and betas ** (c / (c + 1)), c = interval.

Every step reads its randomness from `iteration_keys(state.rng, state.step)`, so the run is a pure
function of (initial state, data order): a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from gangealing_jax.losses.ggdr import cosine_distance
from gangealing_jax.models.discriminator import Discriminator
from gangealing_jax.models.stylegan2 import Generator, SynthesisOutput, style_mix
from gangealing_jax.training import parallel


@dataclasses.dataclass(frozen=True)
class GANSetup:
    """Static description of the training problem (hashable: jitted steps close over it)."""

    generator: Generator
    discriminator: Discriminator
    batch: int  # global batch of real and of fake images per step
    lr: float = 0.002
    r1: float = 10.0  # R1 weight (gamma)
    d_reg_every: int = 16
    path_regularize: float = 2.0  # 0 turns the path-length penalty off
    path_batch_shrink: int = 2
    g_reg_every: int = 4
    path_decay: float = 0.01  # running-mean rate of the path length target
    mixing: float = 0.9  # probability that a fake batch is style-mixed
    ema_decay: float = 0.5 ** (32 / 10_000)
    xflip: bool = True  # mirror each real image with probability 1/2
    mesh: Any = None  # jax Mesh the fakes are sharded over (None: let XLA decide)
    # GGDR weight; used when the discriminator has a decoder, whose target is the generator's
    # feature map at discriminator.config.decoder_resolution.
    ggdr_weight: float = 0.0

    def __post_init__(self):
        dcfg = self.discriminator.config
        if self.ggdr_weight and not dcfg.decoder_resolution:
            raise ValueError("ggdr_weight needs a discriminator with a decoder")
        if dcfg.decoder_resolution:
            channels = self.generator.config.channels[dcfg.decoder_resolution.bit_length() - 3]
            if dcfg.decoder_channels != channels:
                raise ValueError(
                    f"the decoder predicts {dcfg.decoder_channels} channels; the generator has "
                    f"{channels} at resolution {dcfg.decoder_resolution}"
                )

    @property
    def ggdr(self) -> bool:
        return self.discriminator.config.decoder_resolution > 0

    @property
    def path_batch(self) -> int:
        return max(1, self.batch // self.path_batch_shrink)

    def optimizer(self, reg_every: int | None) -> optax.GradientTransformation:
        """Adam(0, 0.99) with the lazy-regularisation correction when `reg_every` is given."""
        ratio = reg_every / (reg_every + 1) if reg_every else 1.0
        return optax.adam(self.lr * ratio, b1=0.0**ratio, b2=0.99**ratio, eps=1e-8)

    def g_optimizer(self) -> optax.GradientTransformation:
        return self.optimizer(self.g_reg_every if self.path_regularize > 0 else None)

    def d_optimizer(self) -> optax.GradientTransformation:
        return self.optimizer(self.d_reg_every if self.r1 > 0 else None)


@flax.struct.dataclass
class GANState:
    step: jax.Array  # int32 (): iterations completed
    g_params: Any
    d_params: Any
    ema_params: Any  # EMA of g_params: the generator that is sampled and exported
    g_buffers: Any  # the generator's fixed noise inputs (collection 'buffers')
    g_opt_state: Any
    d_opt_state: Any
    mean_path_length: jax.Array  # float32 (): running target of the path-length penalty
    rng: jax.Array  # uint32 (2,): base key of the run

    def ema_variables(self) -> dict:
        return {"params": self.ema_params, "buffers": self.g_buffers}


class IterationKeys(NamedTuple):
    d_fake: jax.Array
    real_flip: jax.Array
    g_fake: jax.Array
    path_fake: jax.Array


def iteration_keys(rng: jax.Array, step: jax.Array) -> IterationKeys:
    return IterationKeys(
        *jax.random.split(jax.random.fold_in(rng, step), len(IterationKeys._fields))
    )


def init_state(setup: GANSetup, key: jax.Array) -> GANState:
    g_key, d_key, run_key = jax.random.split(key, 3)
    gcfg = setup.generator.config
    g_vars = setup.generator.init(g_key, jnp.zeros((1, gcfg.style_dim)), noise_mode="const")
    d_size = setup.discriminator.config.size
    d_params = setup.discriminator.init(d_key, jnp.zeros((1, d_size, d_size, 3)))["params"]
    g_params = g_vars["params"]
    return GANState(
        step=jnp.zeros((), jnp.int32),
        g_params=g_params,
        d_params=d_params,
        ema_params=jax.tree.map(jnp.copy, g_params),
        g_buffers=g_vars["buffers"],
        g_opt_state=setup.g_optimizer().init(g_params),
        d_opt_state=setup.d_optimizer().init(d_params),
        mean_path_length=jnp.zeros((), jnp.float32),
        rng=run_key,
    )


# --- pieces -------------------------------------------------------------------------------------


def _shard_rows(x, setup: GANSetup):
    """Splits a generated batch over the mesh (params are replicated, so XLA would not)."""
    mesh = setup.mesh
    if mesh is None or x.shape[0] % mesh.devices.size:
        return x
    return jax.lax.with_sharding_constraint(x, parallel.batch_sharding(mesh))


class FakeInputs(NamedTuple):
    """Randomness of one batch of fakes."""

    z: jax.Array  # (N, 2, style_dim): two latents per sample, the second used past `inject`
    noises: list  # per synthesis layer (N, R, R, 1)
    inject: jax.Array  # int32 (): first W+ layer of the second latent; n_latent = no mixing
    projection: jax.Array | None  # (N, size, size, 3) / size: path-length probe, when asked for


def draw_fake_inputs(setup: GANSetup, key, batch: int, projection: bool = False) -> FakeInputs:
    """Every random input of a fake batch from one Gaussian and one uniform draw.

    One flat draw, sliced, instead of one per array: each random op costs XLA's CPU compiler
    about a second, and a step holds a dozen of them otherwise.
    """
    gcfg = setup.generator.config
    shapes = [(batch, 2, gcfg.style_dim)] + [(batch,) + s[1:] for s in gcfg.noise_shapes()]
    if projection:
        shapes.append((batch, gcfg.size, gcfg.size, 3))
    sizes = [math.prod(s) for s in shapes]
    gauss_key, choice_key = jax.random.split(key)
    flat = jax.random.normal(gauss_key, (sum(sizes),))
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    parts = [
        _shard_rows(flat[o : o + n].reshape(shape), setup)
        for o, n, shape in zip(offsets, sizes, shapes, strict=True)
    ]
    mix_draw, index_draw = jax.random.uniform(choice_key, (2,))
    n_latent = gcfg.n_latent
    index = 1 + jnp.floor(index_draw * (n_latent - 1)).astype(jnp.int32)  # uniform in 1..n_latent-1
    inject = jnp.where(mix_draw < setup.mixing, index, n_latent)
    probe = parts.pop() / gcfg.size if projection else None  # 1/sqrt(H*W) scaled
    return FakeInputs(z=parts[0], noises=parts[1:], inject=inject, projection=probe)


def mixed_w_plus(setup: GANSetup, g_params, buffers, inputs: FakeInputs):
    """Style-mixed W+ (N, n_latent, style_dim), as the reference trains."""
    gen = setup.generator
    batch, _, dim = inputs.z.shape
    w = gen.apply(
        {"params": g_params, "buffers": buffers},
        inputs.z.reshape(batch * 2, dim),
        method=Generator.map,
    ).reshape(batch, 2, dim)
    return style_mix(w[:, 0], w[:, 1], inputs.inject, gen.config.n_latent)


def synthesize(setup: GANSetup, g_params, buffers, w_plus, noises):
    return setup.generator.apply(
        {"params": g_params, "buffers": buffers}, w_plus, noises=noises, method=Generator.synthesize
    )


def generate(setup: GANSetup, g_params, buffers, inputs: FakeInputs):
    """Fakes (N, size, size, 3)."""
    w_plus = mixed_w_plus(setup, g_params, buffers, inputs)
    return synthesize(setup, g_params, buffers, w_plus, inputs.noises)


def generate_with_features(setup: GANSetup, g_params, buffers, inputs: FakeInputs):
    """`generate` with the generator's feature maps of the same forward pass (SynthesisOutput)."""
    w_plus = mixed_w_plus(setup, g_params, buffers, inputs)
    return setup.generator.apply(
        {"params": g_params, "buffers": buffers},
        w_plus,
        noises=inputs.noises,
        method=Generator.synthesize_features,
    )


def real_images(setup: GANSetup, images_u8, key):
    """uint8 (N, H, W, 3) -> float in [-1, 1], randomly mirrored when `xflip`."""
    x = images_u8.astype(jnp.float32) / 127.5 - 1.0
    if setup.xflip:
        flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1], x)
    return x


def _discriminate(setup: GANSetup, d_params, images):
    return setup.discriminator.apply({"params": d_params}, images)[:, 0]  # (N,)


# --- steps --------------------------------------------------------------------------------------


def d_loss(d_params, g_params, g_buffers, inputs: FakeInputs, real, *, setup: GANSetup):
    """D's loss on the fakes of `inputs` and the float `real` images: (loss, metrics).

    Differentiable in d_params only: the fakes, and the GGDR target, are stopped.
    """
    made: SynthesisOutput = jax.lax.stop_gradient(
        generate_with_features(setup, g_params, g_buffers, inputs)
    )
    fake_out = setup.discriminator.apply(
        {"params": d_params}, made.image, method=Discriminator.forward
    )
    fake_pred = fake_out.logit[:, 0]
    real_pred = _discriminate(setup, d_params, real)
    loss = jnp.mean(jax.nn.softplus(-real_pred)) + jnp.mean(jax.nn.softplus(fake_pred))
    metrics = {"d_loss": loss, "real_score": jnp.mean(real_pred), "fake_score": jnp.mean(fake_pred)}
    if not setup.ggdr:
        return loss, metrics
    # GGDR on every D step, as the paper trains: the target is the feature map made while
    # synthesising these very fakes (the other maps are unused, and XLA drops them).
    target = made.feature_at(setup.discriminator.config.decoder_resolution)  # (N, R, R, C)
    metrics["ggdr"] = cosine_distance(fake_out.decoded, target)
    return loss + setup.ggdr_weight * metrics["ggdr"], metrics


def d_step(state: GANState, real_u8, *, setup: GANSetup):
    keys = iteration_keys(state.rng, state.step)
    inputs = draw_fake_inputs(setup, keys.d_fake, setup.batch)
    real = real_images(setup, real_u8, keys.real_flip)
    loss_fn = functools.partial(d_loss, setup=setup)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.d_params, state.g_params, state.g_buffers, inputs, real
    )
    updates, d_opt_state = setup.d_optimizer().update(grads, state.d_opt_state, state.d_params)
    state = state.replace(
        d_params=optax.apply_updates(state.d_params, updates), d_opt_state=d_opt_state
    )
    return state, metrics


def d_r1_step(state: GANState, real_u8, *, setup: GANSetup):
    keys = iteration_keys(state.rng, state.step)
    real = real_images(setup, real_u8, keys.real_flip)  # the same images d_step saw

    def loss_fn(d_params):
        grad = jax.grad(lambda x: jnp.sum(_discriminate(setup, d_params, x)))(real)
        penalty = jnp.mean(jnp.sum(jnp.square(grad), axis=(1, 2, 3)))
        return setup.r1 / 2 * penalty * setup.d_reg_every, penalty

    (_, penalty), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
    updates, d_opt_state = setup.d_optimizer().update(grads, state.d_opt_state, state.d_params)
    state = state.replace(
        d_params=optax.apply_updates(state.d_params, updates), d_opt_state=d_opt_state
    )
    return state, {"r1": penalty}


def g_step(state: GANState, *, setup: GANSetup):
    keys = iteration_keys(state.rng, state.step)
    inputs = draw_fake_inputs(setup, keys.g_fake, setup.batch)

    def loss_fn(g_params):
        fake = generate(setup, g_params, state.g_buffers, inputs)
        return jnp.mean(jax.nn.softplus(-_discriminate(setup, state.d_params, fake)))

    loss, grads = jax.value_and_grad(loss_fn)(state.g_params)
    updates, g_opt_state = setup.g_optimizer().update(grads, state.g_opt_state, state.g_params)
    state = state.replace(
        g_params=optax.apply_updates(state.g_params, updates), g_opt_state=g_opt_state
    )
    return state, {"g_loss": loss}


def g_path_step(state: GANState, *, setup: GANSetup):
    keys = iteration_keys(state.rng, state.step)
    inputs = draw_fake_inputs(setup, keys.path_fake, setup.path_batch, projection=True)

    def loss_fn(g_params):
        w_plus = mixed_w_plus(setup, g_params, state.g_buffers, inputs)
        _, pullback = jax.vjp(
            lambda w: synthesize(setup, g_params, state.g_buffers, w, inputs.noises), w_plus
        )
        (grad,) = pullback(inputs.projection)  # d sum(fake * projection) / d W+: (N, n_latent, D)
        lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grad), axis=2), axis=1))  # (N,)
        # The target moves with this batch's mean and is differentiated through, as in the
        # reference.
        target = state.mean_path_length + setup.path_decay * (
            jnp.mean(lengths) - state.mean_path_length
        )
        penalty = jnp.mean(jnp.square(lengths - target))
        return setup.path_regularize * setup.g_reg_every * penalty, (penalty, lengths, target)

    (_, (penalty, lengths, target)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.g_params
    )
    updates, g_opt_state = setup.g_optimizer().update(grads, state.g_opt_state, state.g_params)
    state = state.replace(
        g_params=optax.apply_updates(state.g_params, updates),
        g_opt_state=g_opt_state,
        mean_path_length=target,
    )
    return state, {"path": penalty, "path_length": jnp.mean(lengths), "mean_path_length": target}


def ema_step(state: GANState, *, setup: GANSetup):
    """EMA of the generator parameters (buffers are fixed), then advances the iteration counter."""
    ema = optax.incremental_update(state.g_params, state.ema_params, 1.0 - setup.ema_decay)
    return state.replace(ema_params=ema, step=state.step + 1)
