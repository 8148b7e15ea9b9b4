"""Activation and normalisation ops of StyleGAN2."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def fused_leaky_relu(x: jnp.ndarray, bias: jnp.ndarray | None = None) -> jnp.ndarray:
    """leaky_relu(x + bias, 0.2) * sqrt(2); bias broadcast over the last (channel) axis.

    The slope is fixed at 0.2: the reference's CPU path ignores any other value it is given.
    """
    if bias is not None:
        x = x + bias
    return jax.nn.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN


def pixel_norm(x: jnp.ndarray, axis: int = -1, eps: float = 1e-8) -> jnp.ndarray:
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)
