"""Warp heads of the spatial transformer: regress a warp from trunk features and apply it.

Both heads start as the identity warp (their last layer is zero-initialised, as in the reference).
Rows of every output are batch-major over heads: row n * K' + k is image n warped by head k, where
K' = num_heads when `heads` is None (every image by every head) and K' = 1 when `heads` (N,) picks
one head per image.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gangealing_jax.models.layers import EqualConv2d
from gangealing_jax.ops.conv import conv2d
from gangealing_jax.ops.flow import convex_upsample
from gangealing_jax.ops.mipmap import DEFAULT_MAX_LEVELS, mipmap_warp
from gangealing_jax.ops.precision import FLOAT32, Policy, widen
from gangealing_jax.ops.sampling import (
    affine_grid,
    apply_affine,
    compose_affine,
    grid_sample,
    identity_grid,
    lerp,
    resize_bilinear,
    similarity_matrix,
)

NUM_SIMILARITY_PARAMS = 4  # rotation, log-scale, shift x, shift y
# How the raw parameters of a horizontally mirrored image map back to the image itself: a mirror
# negates the rotation (pi * tanh(rot) is odd in rot) and the x shift; scale and y shift stay.
MIRROR_PARAM_SIGNS = (-1.0, 1.0, -1.0, 1.0)


def mirror_averaged_params(params: jnp.ndarray) -> jnp.ndarray:
    """(2N, 4, K) raw similarity parameters, rows [images; their mirrors] -> (N, 4, K): the mean
    of each image's own parameters and those its mirror implies for it."""
    n = params.shape[0] // 2
    signs = jnp.asarray(MIRROR_PARAM_SIGNS, params.dtype)[:, None]
    return 0.5 * (params[:n] + signs * params[n:])


class HeadOutput(NamedTuple):
    image: jnp.ndarray  # (M, R, R, C) warped source pixels
    grid: jnp.ndarray  # (M, R, R, 2) sampling grid into the source
    warp: jnp.ndarray  # similarity: (M, 2, 3) matrix; flow: (M, F, F, 2) residual flow


def warp_image(source, grid, padding_mode: str, antialias: bool, max_levels: float):
    if antialias:
        return mipmap_warp(source, grid, padding_mode, max_levels).image
    return grid_sample(source, grid, padding_mode)


def _expand_rows(x, repeats: int):
    """(N, ...) -> (N * repeats, ...), each row repeated in place (torch repeat_interleave)."""
    return x if repeats == 1 else jnp.repeat(x, repeats, axis=0)


class ZeroInitEqualConv2d(nn.Module):
    """EqualConv2d whose weight and bias start at zero (the flow head's last layer)."""

    features: int
    kernel_size: int
    padding: int = 0
    policy: Policy = FLOAT32

    @nn.compact
    def __call__(self, x):
        in_ch, k = x.shape[-1], self.kernel_size
        weight = self.param("weight", nn.initializers.zeros, (k, k, in_ch, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        weight = weight / math.sqrt(in_ch * k * k)
        return conv2d(x, weight, padding=self.padding, policy=self.policy) + bias


class SimilarityHead(nn.Module):
    """Rotation, uniform scale and shift from (N, D) features; samples with an affine grid.

    Always float32 at full precision: its four numbers per image become the affine warp.
    """

    num_heads: int = 1
    antialias: bool = True
    max_mipmap_levels: float = DEFAULT_MAX_LEVELS

    @nn.compact
    def __call__(
        self,
        source,
        features,
        *,
        output_size: int,
        heads=None,
        base_warp=None,
        alpha=None,
        padding_mode: str = "border",
        mirror_average: bool = False,
    ) -> HeadOutput:
        """source (N, H, W, C) pixels, features (N, D); heads (N,) int or None; base_warp
        (N, 2, 3) composed before this warp; alpha (N,) lerps the result towards identity.

        mirror_average: features are (2N, D), of the images and then of their horizontal mirrors;
        each image's warp is regressed from the mean of the two (`mirror_averaged_params`).
        """
        k = self.num_heads
        rows = features.shape[0]
        params = nn.Dense(
            NUM_SIMILARITY_PARAMS * k,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            precision=jax.lax.Precision.HIGHEST,
            name="linear",
        )(features)  # (rows, 4K): four groups of K (rot, scale, tx, ty)
        params = params.reshape(rows, NUM_SIMILARITY_PARAMS, k)
        if mirror_average:
            params = mirror_averaged_params(params)
        n = params.shape[0]
        if heads is not None:
            params = jnp.take_along_axis(params, heads[:, None, None], axis=2)  # (N, 4, 1)
        per_image = params.shape[2]
        matrix = similarity_matrix(*(params[:, i] for i in range(NUM_SIMILARITY_PARAMS)))
        if base_warp is not None:  # (N, K', 2, 3)
            matrix = compose_affine(base_warp[:, None], matrix)
        if alpha is not None:
            identity = jnp.eye(2, 3, dtype=matrix.dtype)
            matrix = lerp(identity, matrix, alpha[:, None, None, None])
        matrix = matrix.reshape(n * per_image, 2, 3)
        grid = affine_grid(matrix, (output_size, output_size))
        source = _expand_rows(source, per_image)
        image = warp_image(source, grid, padding_mode, self.antialias, self.max_mipmap_levels)
        return HeadOutput(image, grid, matrix)


class FlowHead(nn.Module):
    """Dense residual flow from (N, h, w, D) features, convex-upsampled by `flow_downsample`."""

    num_heads: int = 1
    flow_downsample: int = 8
    antialias: bool = True
    max_mipmap_levels: float = DEFAULT_MAX_LEVELS
    policy: Policy = FLOAT32  # of the four convolutions; the flow and the grid stay float32

    @nn.compact
    def __call__(
        self,
        source,
        features,
        *,
        output_size: int | None = None,
        heads=None,
        base_warp=None,
        alpha=None,
        padding_mode: str = "border",
    ) -> HeadOutput:
        """As SimilarityHead; output_size None keeps the flow resolution F = h * flow_downsample,
        otherwise the sampling grid (not the pixels) is bilinearly resized to output_size."""
        k, f = self.num_heads, self.flow_downsample
        n, h, w, channels = features.shape
        conv = functools.partial(EqualConv2d, kernel_size=3, padding=1, policy=self.policy)
        hidden = nn.relu(conv(channels, name="flow_out_0")(features))
        coarse = ZeroInitEqualConv2d(2 * k, 3, 1, self.policy, name="flow_out_2")(hidden)
        hidden = nn.relu(conv(channels, name="mask_out_0")(features))
        mask = conv(9 * f * f * k, name="mask_out_2")(hidden)
        # The convex-upsampling weights (a softmax) and the flow are float32.
        coarse, mask = widen(coarse), widen(mask)
        coarse = coarse.reshape(n, h, w, k, 2)
        mask = mask.reshape(n, h, w, k, 9 * f * f)
        if heads is None:
            per_image = k
            coarse = coarse.transpose(0, 3, 1, 2, 4).reshape(n * k, h, w, 2)
            mask = mask.transpose(0, 3, 1, 2, 4).reshape(n * k, h, w, 9 * f * f)
        else:
            per_image = 1
            pick = heads[:, None, None, None, None]
            coarse = jnp.take_along_axis(coarse, pick, axis=3)[:, :, :, 0]
            mask = jnp.take_along_axis(mask, pick, axis=3)[:, :, :, 0]
        delta_flow = convex_upsample(coarse, mask, f)  # (M, F, F, 2)
        identity = identity_grid(h * f, w * f, delta_flow.dtype)
        grid = identity + delta_flow
        if base_warp is not None:  # (N, 2, 3)
            grid = apply_affine(_expand_rows(base_warp, per_image), grid)
        if alpha is not None:
            grid = lerp(identity, grid, _expand_rows(alpha, per_image)[:, None, None, None])
        if output_size is not None:
            grid = resize_bilinear(grid, output_size / grid.shape[2])
        source = _expand_rows(source, per_image)
        image = warp_image(source, grid, padding_mode, self.antialias, self.max_mipmap_levels)
        return HeadOutput(image, grid, delta_flow)
