"""The generator-guided discriminator regularisation (GGDR) loss: per-pixel cosine distance."""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-8  # floor of |prediction| * |target|: an all-zero pixel costs 1, not NaN


def cosine_distance(prediction: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Mean over pixels of 1 - cos(angle) between channel vectors; scalar in [0, 2].

    prediction: (N, R, R, C), the discriminator decoder's map; target: the generator's feature map
    of the same shape. The target is a label, never trained towards: its gradient is stopped.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ")
    target = jax.lax.stop_gradient(target).astype(jnp.float32)
    prediction = prediction.astype(jnp.float32)
    dot = jnp.sum(prediction * target, axis=-1)
    norms = jnp.sqrt(jnp.sum(jnp.square(prediction), axis=-1) * jnp.sum(jnp.square(target), -1))
    return jnp.mean(1.0 - dot / jnp.maximum(norms, EPS))
