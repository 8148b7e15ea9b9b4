"""The GANgealing objective: warp G(w) onto the congealed target G(mix(c, w)), perceptually.

x = G(w) is drawn with one noise key and the target G(mix(c, w, psi)) with an independent one
(shared noise makes alignment much worse). The STN sees x resized to flow_size; the perceptual
distance compares its output with the target; Huber total-variation and L2 identity terms keep the
residual flow smooth and small. Optionally G(w) is first moved by a random similarity (`augment`),
so that the STN also learns to undo poses wider than the generator's own. With clusters
(num_heads > 1) and/or flips, each image is scored under every head (and its mirror), only the best
one is optimised, and only that head's flow is regularised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gangealing_jax.losses.regularizers import (
    flow_identity_loss,
    mirror_equivariance_loss,
    pose_equivariance_loss,
    total_variation_loss,
    zoom_out_penalty,
)
from gangealing_jax.models.congealing import mix_latents
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stylegan2 import Generator, broadcast_w
from gangealing_jax.ops.mipmap import bilinear_downsample
from gangealing_jax.ops.sampling import affine_grid, grid_sample


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
    """Static settings of the objective (hashable: part of the jit cache key)."""

    inject: int  # W+ layers [0, inject) take the congealing vector
    padding_mode: str = "reflection"  # STN padding while training
    sample_from_full_res: bool = False  # sample pixels from the full-resolution G(w)
    freeze_ll: bool = False  # no gradient into the congealing coefficients
    flips: bool = False  # also score the mirrored input; optimise the better of the two
    tv_weight: float = 1000.0
    flow_identity_weight: float = 1.0
    augment_padding: str = "reflection"  # padding of the randomly posed G(w) (see `augment`)
    # Weight of the agreement between the congealing of G(w) and of its posed copy (only with
    # `augment`): a direct signal for the poses that the perceptual distance sees only faintly.
    equivariance_weight: float = 0.0
    # The equivariance term congeals the plain G(w) of every `equivariance_every`-th image only
    # (rows 0, k, 2k, ...): a second STN pass over a part of the batch. A stride rather than a
    # prefix, so that a data-parallel step whose shards hold a multiple of k rows scores the same
    # images as a single-device one.
    equivariance_every: int = 1
    # Weight of the distance between each congealed image and its mirror image: for a left-right
    # symmetric category it pulls the congealed pose upright and centred, whatever the target.
    symmetry_weight: float = 0.0
    # Weight of the agreement between the congealing of the mirrored G(w) and the mirrored
    # congealing of G(w) (a similarity stage's matrices): a consistency prior for left-right
    # symmetric categories (on the procedural faces it lowered rotation noise, not PCK).
    mirror_weight: float = 0.0
    # Weight of zoom_out_penalty: the squared log-zoom of each sampling grid beyond
    # `zoom_out_max` image widths (a guard against zooming out into padding; 0 = off).
    zoom_out_weight: float = 0.0
    zoom_out_max: float = 1.5


class Frozen(NamedTuple):
    """Inputs of the objective that are not trained."""

    generator: dict  # generator variables {'params', 'buffers'}
    directions: jnp.ndarray  # (ndirs, D) W-space PCA directions
    lat_mean: jnp.ndarray  # (1, D) mean w


class GeneratorNoise(NamedTuple):
    """Per-layer noise of the two generator calls (lists of (rows, R, R, 1) arrays)."""

    inputs: list  # for G(w): N rows
    targets: list  # for G(mix(c, w)): N * heads rows (image-major)


def draw_noise(generator: Generator, key: jax.Array, batch: int, heads: int = 1) -> GeneratorNoise:
    """Independent noise for G(w) and for the congealed targets, from one key.

    Drawn for the whole batch at once, so a sharded step sees exactly the noise of a single-device
    step.
    """
    key_in, key_target = jax.random.split(key)
    shapes = generator.config.noise_shapes()

    def draw(k, rows):
        keys = jax.random.split(k, len(shapes))
        return [jax.random.normal(kk, (rows,) + s[1:]) for kk, s in zip(keys, shapes, strict=True)]

    return GeneratorNoise(draw(key_in, batch), draw(key_target, batch * heads))


class ObjectiveTerms(NamedTuple):
    total: jnp.ndarray  # () perceptual + the other terms x their weights
    perceptual: jnp.ndarray  # () mean perceptual distance of the chosen warps
    tv: jnp.ndarray  # () total variation of the chosen residual flows
    identity: jnp.ndarray  # () mean squared chosen residual flow
    equivariance: jnp.ndarray  # () pose_equivariance_loss of G(w) and its posed copy (0 without)
    symmetry: jnp.ndarray  # () mean distance of the congealed images to their mirrors (0 without)
    mirror: jnp.ndarray  # () mirror_equivariance_loss of G(w) (posed) and its mirror (0 without)
    zoom_out: jnp.ndarray  # () zoom_out_penalty of every sampling grid (0 without)
    distances: jnp.ndarray  # (N, J) distance per image and candidate (J = heads * (1 + flips))
    assignments: jnp.ndarray  # (N,) int32 chosen candidate; j >= heads means the mirrored input
    delta_flow: jnp.ndarray  # (N, F, F, 2) chosen residual flows (zeros without a flow stage)
    aligned_pred: jnp.ndarray  # (R, F, F, 3) every STN output, rows (flip, image, head)
    grid: jnp.ndarray  # (R, F, F, 2) their sampling grids into the STN's input
    target: jnp.ndarray  # (N * heads, F, F, 3) congealed targets, rows (image, head)
    unaligned: jnp.ndarray  # (N, S, S, 3) G(w), moved by `augment` when given


def resize_to_flow(images: jnp.ndarray, flow_size: int) -> jnp.ndarray:
    """Anti-aliased downsampling of generator output to the STN's resolution (identity if equal)."""
    size = images.shape[1]
    if size == flow_size:
        return images
    if size % flow_size:
        raise ValueError(f"generator size {size} is not a multiple of flow_size {flow_size}")
    return bilinear_downsample(images, size // flow_size)


def gangealing_objective(
    trainable: dict,
    frozen: Frozen,
    z: jnp.ndarray,
    noise: GeneratorNoise | None,
    psi: jnp.ndarray,
    distance: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    augment: jnp.ndarray | None = None,
    *,
    generator: Generator,
    stn: STN,
    settings: ObjectiveSettings,
) -> ObjectiveTerms:
    """trainable: {'stn': STN variables, 'congealing': {'coefficients': (heads, ndirs)}}.

    noise: fresh noise for both generator calls (see `draw_noise`); None uses the generator's fixed
    noise buffers for both (reproducible evaluation).
    augment: (N, 2, 3) affine matrices (F.affine_grid convention) that resample G(w) before the
      STN sees it; the target is not moved, so the STN must also undo them. None: no resampling.
    """
    gcfg = generator.config
    heads = stn.config.num_heads
    flow_size = stn.config.flow_size
    batch = z.shape[0]
    noise_in, noise_target = (None, None) if noise is None else noise

    def synthesize(w_plus, noises):
        return generator.apply(
            frozen.generator, w_plus, noise_mode="const", noises=noises, method="synthesize"
        )

    w = jax.lax.stop_gradient(generator.apply(frozen.generator, z, method="map"))
    unaligned = jax.lax.stop_gradient(synthesize(broadcast_w(w, gcfg.n_latent), noise_in))
    plain = unaligned
    if augment is not None:
        grid = affine_grid(augment.astype(unaligned.dtype), unaligned.shape[1:3])
        unaligned = grid_sample(unaligned, grid, settings.augment_padding)
    coefficients = trainable["congealing"]["coefficients"]
    if settings.freeze_ll:
        coefficients = jax.lax.stop_gradient(coefficients)
    w_target = mix_latents(
        w, frozen.directions, frozen.lat_mean, coefficients, psi, settings.inject, gcfg.n_latent
    )  # (N * heads, n_latent, D), rows (image, head)
    target = resize_to_flow(synthesize(w_target, noise_target), flow_size)

    def congeal(images):
        source = images if settings.sample_from_full_res else None
        return stn.apply(
            trainable["stn"],
            resize_to_flow(images, flow_size),
            source,
            padding_mode=settings.padding_mode,
        )

    inputs = unaligned
    if settings.flips:
        inputs = jnp.concatenate([unaligned, jnp.flip(unaligned, axis=2)], axis=0)  # (2N, ...)
    out = congeal(inputs)
    copies = 2 if settings.flips else 1
    targets = jnp.tile(target, (copies, 1, 1, 1))  # rows (flip, image, head)
    per_row = distance(out.image, targets)  # (copies * N * heads,)
    # (flip, image, head) -> (image, flip * heads + head)
    distances = per_row.reshape(copies, batch, heads).transpose(1, 0, 2).reshape(batch, -1)

    if out.flow is None:
        flows = jnp.zeros((out.image.shape[0], flow_size, flow_size, 2), out.image.dtype)
    else:
        flows = out.flow
    if copies * heads == 1:
        assignments = jnp.zeros((batch,), jnp.int32)
        perceptual = jnp.mean(distances)
        chosen_flow = flows
    else:
        assignments = jnp.argmin(distances, axis=1).astype(jnp.int32)
        perceptual = jnp.mean(jnp.take_along_axis(distances, assignments[:, None], axis=1))
        grouped = flows.reshape((copies, batch, heads) + flows.shape[1:])
        grouped = jnp.moveaxis(grouped, 0, 1).reshape((batch, copies * heads) + flows.shape[1:])
        chosen_flow = grouped[jnp.arange(batch), assignments]

    has_flow = out.flow is not None
    tv = total_variation_loss(chosen_flow) if has_flow and settings.tv_weight > 0 else 0.0
    identity = (
        flow_identity_loss(chosen_flow) if has_flow and settings.flow_identity_weight > 0 else 0.0
    )
    equivariance = 0.0
    if augment is not None and settings.equivariance_weight > 0:
        if out.matrix is None:
            raise ValueError("equivariance_weight needs an STN with a similarity stage")
        every = settings.equivariance_every
        plain_out = congeal(plain[::every])
        # The unmirrored rows (image, head) of out, of the images congealed again.
        posed = out.matrix[: batch * heads].reshape((batch, heads) + out.matrix.shape[1:])
        posed = posed[::every].reshape((-1,) + out.matrix.shape[1:])
        poses = jnp.repeat(augment[::every].astype(out.matrix.dtype), heads, axis=0)
        equivariance = pose_equivariance_loss(posed, plain_out.matrix, poses)
    symmetry = 0.0
    if settings.symmetry_weight > 0:
        congealed = out.image[: batch * heads]  # the unmirrored rows (image, head)
        symmetry = jnp.mean(distance(congealed, jnp.flip(congealed, axis=2)))
    mirror = 0.0
    if settings.mirror_weight > 0:
        if out.matrix is None:
            raise ValueError("mirror_weight needs an STN with a similarity stage")
        rows = batch * heads
        if settings.flips:  # the mirrored inputs were congealed already: rows (flip, image, head)
            mirrored = out.matrix[rows:]
        else:
            mirrored = congeal(jnp.flip(unaligned, axis=2)).matrix
        mirror = mirror_equivariance_loss(mirrored, out.matrix[:rows])
    zoom_out = 0.0
    if settings.zoom_out_weight > 0:
        zoom_out = zoom_out_penalty(out.grid, settings.zoom_out_max)
    zoom_out = jnp.asarray(zoom_out, perceptual.dtype)
    tv = jnp.asarray(tv, perceptual.dtype)
    identity = jnp.asarray(identity, perceptual.dtype)
    equivariance = jnp.asarray(equivariance, perceptual.dtype)
    symmetry = jnp.asarray(symmetry, perceptual.dtype)
    mirror = jnp.asarray(mirror, perceptual.dtype)
    total = (
        perceptual
        + settings.tv_weight * tv
        + settings.flow_identity_weight * identity
        + settings.equivariance_weight * equivariance
        + settings.symmetry_weight * symmetry
        + settings.mirror_weight * mirror
        + settings.zoom_out_weight * zoom_out
    )
    return ObjectiveTerms(
        total=total,
        perceptual=perceptual,
        tv=tv,
        identity=identity,
        equivariance=equivariance,
        symmetry=symmetry,
        mirror=mirror,
        zoom_out=zoom_out,
        distances=distances,
        assignments=assignments,
        delta_flow=chosen_flow,
        aligned_pred=out.image,
        grid=out.grid,
        target=target,
        unaligned=unaligned,
    )
