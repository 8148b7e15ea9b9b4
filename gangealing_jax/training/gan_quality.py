"""How close a generator's images are to real ones, with no downloaded weights.

Both image sets go through the fixed random conv net of `models/random_features.py`; the
measures compare the two feature clouds:

  frechet   Fréchet distance of Gaussians fitted to them: |mu_a - mu_b|^2 +
            tr(S_a + S_b - 2 (S_a S_b)^(1/2)). 0 for identical sets; biased upwards for few
            samples, so compare only numbers computed from the same sample counts.
  kid       unbiased squared MMD with the kernel (a.b / D + 1)^3 (KID's): expectation 0 when
            both sets are drawn from one distribution, so it can come out slightly negative.

They are FID / KID computed in another feature space: the values are not comparable to published
FID or KID, only to each other (same net, same image size, same sample counts).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax.models.random_features import RandomFeatureNet, feature_net_params
from gangealing_jax.models.stylegan2 import Generator

BATCH = 100  # images per jitted call (the last call is padded: one compile per size)


class QualityScores(NamedTuple):
    frechet: float
    kid: float

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": float(v) for k, v in self._asdict().items()}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features a (N, D) and b (M, D)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr (S_a S_b)^(1/2) = tr (R S_b R)^(1/2) with R = S_a^(1/2): a symmetric product, so eigh
    # works (no scipy) and rank-deficient covariances (N < D) are no trouble.
    values, vectors = np.linalg.eigh(cov_a)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root @ cov_b @ root)
    cross = np.sum(np.sqrt(np.clip(middle, 0, None)))
    value = np.sum(np.square(mu_a - mu_b)) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return float(max(value, 0.0))  # float error can take an exact 0 a hair below


def kernel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased squared MMD between features a (N, D) and b (M, D), cubic polynomial kernel."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n, m, dim = len(a), len(b), a.shape[1]
    if n < 2 or m < 2:
        raise ValueError(f"kernel_distance needs 2 or more samples per set, got {n} and {m}")
    k_aa = (a @ a.T / dim + 1) ** 3
    k_bb = (b @ b.T / dim + 1) ** 3
    k_ab = (a @ b.T / dim + 1) ** 3
    same_a = (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
    same_b = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(same_a + same_b - 2 * k_ab.mean())


def scores(real_features: np.ndarray, fake_features: np.ndarray) -> QualityScores:
    return QualityScores(
        frechet=frechet_distance(real_features, fake_features),
        kid=kernel_distance(real_features, fake_features),
    )


@functools.lru_cache(maxsize=1)
def _net_params():
    return feature_net_params()


@jax.jit
def _features(params, images):
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) / 127.5 - 1.0
    return RandomFeatureNet().apply(params, images)


def image_features(images, batch: int = BATCH) -> np.ndarray:
    """Features (N, D) of images (N, H, W, 3): uint8, or float in [-1, 1]."""
    images = np.asarray(images)
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        out.append(np.asarray(_features(_net_params(), padded))[: len(chunk)])
    return np.concatenate(out).astype(np.float64)


@functools.lru_cache(maxsize=4)
def _sampler(generator: Generator):
    def sample(variables, params, key):
        z_key, noise_key = jax.random.split(key)
        z = jax.random.normal(z_key, (BATCH, generator.config.style_dim))
        images = generator.apply(variables, z, noise_mode="random", rngs={"noise": noise_key})
        return RandomFeatureNet().apply(params, images)

    return jax.jit(sample)


def generator_features(generator: Generator, variables, key: jax.Array, count: int) -> np.ndarray:
    """Features (count, D) of `count` samples (z ~ N(0, I), fresh noise, no truncation)."""
    sample = _sampler(generator)
    chunks = [
        np.asarray(sample(variables, _net_params(), jax.random.fold_in(key, i)))
        for i in range(-(-count // BATCH))
    ]
    return np.concatenate(chunks)[:count].astype(np.float64)
