"""Learned convex upsampling of a coarse flow field (RAFT), as the reference's FlowHead uses it."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def convex_upsample(flow: jnp.ndarray, mask_logits: jnp.ndarray, factor: int) -> jnp.ndarray:
    """Upsample flow (N, h, w, 2) by `factor` with per-pixel softmax weights over 3x3 neighbours.

    mask_logits: (N, h, w, 9 * factor * factor), channel index = k * factor**2 + fy * factor + fx,
    k = 3 * dy + dx the neighbour (dy, dx in 0..2). The flow is multiplied by `factor` before
    mixing and neighbours outside the coarse grid are zero, as with F.unfold(factor * flow, 3,
    padding=1). Returns (N, h * factor, w * factor, 2); output pixel (y*f + fy, x*f + fx).
    """
    n, h, w, channels = flow.shape
    weights = jax.nn.softmax(mask_logits.reshape(n, h, w, 9, factor, factor), axis=3)
    padded = jnp.pad(factor * flow, ((0, 0), (1, 1), (1, 1), (0, 0)))
    neighbours = jnp.stack(
        [padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=3
    )  # (N, h, w, 9, C)
    mixed = jnp.sum(
        weights[..., None] * neighbours[:, :, :, :, None, None, :], axis=3
    )  # (N, h, w, f, f, C)
    return mixed.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * factor, w * factor, channels)
