"""Initialising the congealing vector: W-space PCA of the frozen generator, and k-means++ centres.

Mapped samples are drawn in fixed-size jitted chunks, so memory stays bounded for the reference's
1,000,000 samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax.models.stylegan2 import Generator, style_mix
from gangealing_jax.training.pca import PCABasis, exact_pca, incremental_pca


class CongealingInit(NamedTuple):
    directions: np.ndarray  # (ndirs, D) float32 PCA directions
    lat_mean: np.ndarray  # (1, D) float32 mean w
    coefficients: np.ndarray  # (num_heads, ndirs) float32 initial coefficients
    basis: PCABasis | None  # None when a fixed (non-PCA) basis was given


def mapped_chunks(
    generator: Generator, variables, key: jax.Array, num_samples: int, chunk: int = 10_000
) -> Iterator[jnp.ndarray]:
    """Yields w = G.map(z) for `num_samples` Gaussian z, `chunk` rows at a time (last one shorter)."""
    dim = generator.config.style_dim
    mapping = jax.jit(
        lambda v, k: generator.apply(v, jax.random.normal(k, (chunk, dim)), method="map")
    )
    for i, start in enumerate(range(0, num_samples, chunk)):
        w = mapping(variables, jax.random.fold_in(key, i))
        yield w[: min(chunk, num_samples - start)]


def wspace_pca(generator, variables, key, ndirs: int, num_samples: int, exact: bool = False):
    """Top-`ndirs` PCA of W. `exact=False` reproduces the reference's IncrementalPCA."""
    if exact:
        return exact_pca(mapped_chunks(generator, variables, key, num_samples), ndirs)
    samples = np.concatenate(
        [np.asarray(w) for w in mapped_chunks(generator, variables, key, num_samples)]
    )
    return incremental_pca(samples, ndirs)


def kmeans_plusplus(
    generator: Generator,
    variables,
    key: jax.Array,
    num_heads: int,
    num_samples: int,
    distance: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    inject_index: int,
    batch: int = 100,
) -> np.ndarray:
    """k-means++ centres in W (as the reference picks them): distances between style-mixed images.

    Each candidate w is rendered with w in layers [0, inject_index) and the mean w after, so images
    differ only in what the congealing vector controls. Returns (num_heads, D) centres.
    """
    w_key, noise_key, pick_key = jax.random.split(key, 3)
    w_all = jnp.concatenate(list(mapped_chunks(generator, variables, w_key, num_samples)))
    mean_w = jnp.mean(w_all, axis=0, keepdims=True)
    n_latent = generator.config.n_latent

    @jax.jit
    def render(w, k):
        w_plus = style_mix(w, jnp.broadcast_to(mean_w, w.shape), inject_index, n_latent)
        return generator.apply(variables, w_plus, rngs={"noise": k}, method="synthesize")

    starts = range(0, num_samples, batch)
    images = [render(w_all[s : s + batch], jax.random.fold_in(noise_key, s)) for s in starts]
    dist_fn = jax.jit(lambda c, x: distance(jnp.broadcast_to(c, x.shape), x))
    keys = jax.random.split(pick_key, num_heads)
    chosen = [int(jax.random.randint(keys[0], (), 0, num_samples))]
    closest = None
    for k in range(1, num_heads):
        centre = render(w_all[chosen[-1]][None], jax.random.fold_in(noise_key, num_samples + k))
        d = jnp.concatenate([dist_fn(centre, x) for x in images])
        closest = d if closest is None else jnp.minimum(closest, d)
        probs = jnp.square(closest) / jnp.sum(jnp.square(closest))
        chosen.append(int(jax.random.choice(keys[k], num_samples, p=probs)))
    return np.asarray(w_all[jnp.array(chosen)])


def init_congealing(
    generator,
    variables,
    key,
    *,
    ndirs: int,
    num_heads: int,
    num_pca_samples: int,
    exact_pca_fit: bool = False,
    distance=None,
    inject_index: int = 5,
    num_kmeans_samples: int = 50_000,
    mean_w: np.ndarray | None = None,
    fixed_basis: Callable[[jax.Array], tuple[np.ndarray, np.ndarray]] | None = None,
) -> CongealingInit:
    """PCA buffers and initial coefficients (zeros, or k-means++ centres projected on the basis).

    `mean_w` (D,): the centre of the congealing vector and of truncation, when the generator
    tracks its own mean w (NVIDIA's w_avg); otherwise the sample mean of the PCA (or of the
    fixed basis).
    fixed_basis: key -> ((ndirs, D) directions, (D,) mean) used instead of the PCA
    (`training.congealing_basis`); it gets the key the PCA would have had.
    """
    pca_key, kmeans_key = jax.random.split(key)
    if fixed_basis is not None:
        directions, basis_mean = fixed_basis(pca_key)
        if mean_w is not None:
            basis_mean = np.asarray(mean_w, np.float64).reshape(-1)
        return _init_on_fixed_basis(
            (directions, basis_mean), generator, variables, kmeans_key, num_heads=num_heads,
            distance=distance, inject_index=inject_index, num_kmeans_samples=num_kmeans_samples,
        )  # fmt: skip
    basis = wspace_pca(generator, variables, pca_key, ndirs, num_pca_samples, exact_pca_fit)
    if mean_w is not None:
        basis = basis._replace(mean=np.asarray(mean_w, np.float64).reshape(-1))
    coefficients = np.zeros((num_heads, ndirs), np.float32)
    if num_heads > 1:
        if distance is None:
            raise ValueError("clustering (num_heads > 1) needs a perceptual distance for k-means++")
        centres = kmeans_plusplus(
            generator, variables, kmeans_key, num_heads, num_kmeans_samples, distance, inject_index
        )
        coefficients = basis.encode(centres).astype(np.float32)
    return CongealingInit(
        directions=np.asarray(basis.components, np.float32),
        lat_mean=np.asarray(basis.mean, np.float32)[None],
        coefficients=coefficients,
        basis=basis,
    )


def _init_on_fixed_basis(
    basis, generator, variables, kmeans_key, *, num_heads, distance, inject_index,
    num_kmeans_samples,
) -> CongealingInit:  # fmt: skip
    directions, mean = (np.asarray(x, np.float32) for x in basis)
    coefficients = np.zeros((num_heads, directions.shape[0]), np.float32)
    if num_heads > 1:
        if distance is None:
            raise ValueError("clustering (num_heads > 1) needs a perceptual distance for k-means++")
        centres = kmeans_plusplus(
            generator, variables, kmeans_key, num_heads, num_kmeans_samples, distance, inject_index
        )
        coefficients = coordinates(centres, directions, mean).astype(np.float32)
    return CongealingInit(directions, mean.reshape(1, -1), coefficients, None)


def coordinates(points, directions, mean) -> np.ndarray:
    """(..., D) points -> (..., ndirs) coefficients whose combination of the directions is the
    closest to points - mean (least squares: a learned basis need not be orthogonal)."""
    centred = np.asarray(points, np.float64) - np.asarray(mean, np.float64)
    flat = centred.reshape(-1, centred.shape[-1])
    coeffs, *_ = np.linalg.lstsq(np.asarray(directions, np.float64).T, flat.T, rcond=None)
    return coeffs.T.reshape(centred.shape[:-1] + (directions.shape[0],))
