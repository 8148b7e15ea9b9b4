"""Gaussian splatting of point values onto an image grid: a soft scatter for sub-pixel points.

Pixel centres sit at integer coordinates: pixel (row i, column j) is the point (x=j, y=i). Each
point adds value * w to the pixels of a square window around it, with
w = exp(-((px - x)^2 + (py - y)^2) / (2 sigma^2)), and adds w alone to a weight image; dividing
the two (`normalize_splat`) gives the weighted average of the values that land on each pixel.

Relation to the reference's CUDA Splat2D (which defines the semantics; it has no backward pass):
- the window spans columns floor(x - r) .. ceil(x + r), rows likewise, r = truncate * sigma. The
  reference uses r = 2 sigma (truncate=2.0); the default here, 3 sigma, keeps more of the tail;
- points outside [0, W) x [0, H) are ignored, as in the reference;
- the reference leaves the Gaussian unnormalised (peak 1 at the point). Here each point's weights
  sum to 1 over its window by default (normalize_per_point=True), so total weight counts points.
  Pass normalize_per_point=False for the reference's weights; its "soft" alpha masks
  (value / max(weight, 1)) assume them, since they rely on a peak weight of 1;
- sigma is one Python float for the whole batch (the reference takes one per image); it fixes
  the window size, which must be static under jit.
Everything is differentiable in points and values; the window membership is piecewise constant.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax.numpy as jnp


class Splat(NamedTuple):
    accumulated: jnp.ndarray  # (N, H, W, C) sum of weight * value
    weight: jnp.ndarray  # (N, H, W, 1) sum of weights


def _axis_weights(coord, size: int, sigma: float, radius: float, extent: int, peak_one: bool):
    """Per-axis window pixels and Gaussian factors for one coordinate of every point.

    coord: (N, P). Returns pixel indices (N, P, K), factors inside the window (N, P, K), and
    whether each pixel lies inside the image (N, P, K); K = 2 * extent + 2. With peak_one the
    factors are divided by their largest value, which cancels in a per-point normalisation and
    keeps a tiny sigma from underflowing every factor to 0.
    """
    offsets = jnp.arange(-extent, extent + 2, dtype=coord.dtype)
    pixels = jnp.floor(coord)[..., None] + offsets  # (N, P, K)
    first = jnp.floor(coord - radius)[..., None]
    last = jnp.ceil(coord + radius)[..., None]
    in_window = (pixels >= first) & (pixels <= last)  # always holds floor(coord)
    log_factor = -((pixels - coord[..., None]) ** 2) / (2.0 * sigma**2)
    if peak_one:
        masked = jnp.where(in_window, log_factor, jnp.finfo(coord.dtype).min)
        log_factor = log_factor - jnp.max(masked, axis=-1, keepdims=True)
    factors = jnp.where(in_window, jnp.exp(log_factor), 0.0)
    inside = (pixels >= 0) & (pixels <= size - 1)
    return pixels.astype(jnp.int32), factors, inside


def splat_points(
    points,
    values,
    height: int,
    width: int,
    sigma: float,
    *,
    truncate: float = 3.0,
    normalize_per_point: bool = True,
    visible=None,
) -> Splat:
    """Splat values (N, P, C) at pixel points (N, P, 2) (x, y) onto (N, height, width) grids.

    sigma: Gaussian standard deviation in pixels (> 0, a Python number: it sets the static
    window of 2 * ceil(truncate * sigma) + 2 pixels per side). visible: optional (N, P) mask or
    per-point weight; 0 removes a point. height, width, sigma, truncate and normalize_per_point
    must be static under jit.
    """
    if not isinstance(sigma, numbers.Real) or not sigma > 0:
        raise ValueError(f"sigma must be a positive Python number (it sizes the window): {sigma}")
    points = jnp.asarray(points)
    values = jnp.asarray(values)
    dtype = jnp.result_type(points.dtype, values.dtype, jnp.float32)
    points, values = points.astype(dtype), values.astype(dtype)
    n, p, _ = points.shape
    channels = values.shape[-1]
    if values.shape[:2] != (n, p):
        raise ValueError(f"values {values.shape} do not match points {points.shape}")
    radius = float(truncate) * float(sigma)
    extent = math.ceil(radius)
    x, y = points[..., 0], points[..., 1]
    cols, fx, col_inside = _axis_weights(x, width, sigma, radius, extent, normalize_per_point)
    rows, fy, row_inside = _axis_weights(y, height, sigma, radius, extent, normalize_per_point)

    point_weight = ((x >= 0) & (x < width) & (y >= 0) & (y < height)).astype(dtype)  # (N, P)
    if normalize_per_point:  # the Gaussian is separable, so its window sum is a product
        point_weight = point_weight / (jnp.sum(fx, -1) * jnp.sum(fy, -1))
    if visible is not None:
        point_weight = point_weight * jnp.asarray(visible, dtype)
    fx = jnp.where(col_inside, fx, 0.0)
    fy = jnp.where(row_inside, fy, 0.0)
    weights = fy[..., :, None] * fx[..., None, :] * point_weight[..., None, None]  # (N, P, K, K)

    # Flat pixel index per window cell; cells outside the image carry weight 0, so clipping
    # their index only keeps the scatter in bounds.
    rows = jnp.clip(rows, 0, height - 1)
    cols = jnp.clip(cols, 0, width - 1)
    batch = jnp.arange(n, dtype=jnp.int32)[:, None, None, None]
    flat = (batch * height + rows[..., :, None]) * width + cols[..., None, :]  # (N, P, K, K)
    flat = flat.reshape(-1)
    weight = jnp.zeros((n * height * width,), dtype).at[flat].add(weights.reshape(-1))
    contributions = weights[..., None] * values[:, :, None, None, :]  # (N, P, K, K, C)
    accumulated = (
        jnp.zeros((n * height * width, channels), dtype)
        .at[flat]
        .add(contributions.reshape(-1, channels))
    )
    return Splat(
        accumulated.reshape(n, height, width, channels), weight.reshape(n, height, width, 1)
    )


def normalize_splat(accumulated, weight, eps: float = 1e-8, soft: bool = False):
    """Weighted average per pixel: accumulated / (weight + eps).

    soft: divide by max(weight, 1) instead, as the reference does for alpha masks, so that
    sparsely covered pixels fade out instead of being scaled up.
    """
    denominator = jnp.maximum(weight, 1.0) if soft else weight
    return accumulated / (denominator + eps)
