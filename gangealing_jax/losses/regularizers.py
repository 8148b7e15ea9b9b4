"""Regularisers on the residual flow predicted by the STN's flow stage.

Flows are (N, H, W, 2) arrays in normalised coordinates. Both losses reduce exactly as the reference
implementation does: a mean over every element (or over every element of one sample).
"""

from __future__ import annotations

import jax.numpy as jnp


def _smooth_l1(abs_diff):
    """Huber / smooth-L1 with threshold 1 applied to non-negative differences."""
    return jnp.where(abs_diff <= 1.0, 0.5 * jnp.square(abs_diff), abs_diff - 0.5)


def total_variation_loss(flow, reduce_batch: bool = True):
    """Smooth-L1 penalty on differences between vertically and horizontally adjacent flow vectors.

    Args:
      flow: (N, H, W, 2) residual flow.
      reduce_batch: True gives a scalar; False gives one value per sample, (N,).

    The vertical and horizontal terms are averaged separately (they hold different element
    counts, N*(H-1)*W*2 and N*H*(W-1)*2) and then added.
    """
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (N, H, W, 2), got {flow.shape}")
    axes = (0, 1, 2, 3) if reduce_batch else (1, 2, 3)
    vertical = _smooth_l1(jnp.abs(flow[:, :-1] - flow[:, 1:])).mean(axis=axes)  # (N, H-1, W, 2)
    horizontal = _smooth_l1(jnp.abs(flow[:, :, :-1] - flow[:, :, 1:])).mean(axis=axes)
    return horizontal + vertical


def flow_identity_loss(flow):
    """Mean squared residual flow: pulls the flow stage towards the identity warp. Scalar."""
    return jnp.mean(jnp.square(flow))
