"""Anti-aliased warping with a blur stack ("mipmap"), and the tent-filter image downsampler.

`mipmap_warp` is the reference's MipmapWarp: every output pixel picks a blur level from how far
apart its neighbours sample the source (log2 of the largest neighbour distance, in source pixels),
then lerps between the two nearest levels of a stack of progressively blurred copies of the
source. The reference sizes its stack from the data (`levels.max().item()`); here the stack always
holds the largest number of levels the clamp allows, so the function jits. Levels above the data's
maximum are never read, so the output is the same.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from gangealing_jax.ops.sampling import clamp_inclusive, grid_sample, resize_bilinear
from gangealing_jax.ops.upfirdn2d import make_kernel, upfirdn2d

DEFAULT_MAX_LEVELS = 3.5
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


def blur_filter() -> np.ndarray:
    """(4, 4) binomial filter of each stack level, normalised to sum 1."""
    return make_kernel(BLUR_TAPS)


def tent_kernel(factor: int) -> np.ndarray:
    """1-D tent filter of BilinearDownsample: taps 1, 3, ..., 2f-1, mirrored, normalised."""
    ramp = np.arange(1, 2 * factor + 1, 2, dtype=np.float64)
    taps = np.concatenate([ramp, ramp[::-1]])
    return (taps / taps.sum()).astype(np.float32)


def _reflect_pad(x: jnp.ndarray, before: int, after: int) -> jnp.ndarray:
    """ReflectionPad2d on the two spatial axes of NHWC (edge sample not repeated)."""
    return jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)), mode="reflect")


def bilinear_downsample(x: jnp.ndarray, factor: int) -> jnp.ndarray:
    """Reference BilinearDownsample(factor): reflection pad int(f/2), tent filter, stride f.

    x: (N, H, W, C) -> (N, H', W', C), H' = (H + 2*int(f/2) - 2f) // f + 1.
    """
    taps = tent_kernel(factor)
    x = _reflect_pad(x, factor // 2, factor // 2)
    x = upfirdn2d(x, taps[None, :], down=(1, factor))  # horizontal pass
    return upfirdn2d(x, taps[:, None], down=(factor, 1))  # vertical pass


def num_stack_levels(max_num_levels: float, size: int, min_level: float = 0.0) -> int:
    """Static stack depth: enough for the clamped maximum level, and no deeper than 1x1."""
    highest = max(max_num_levels - 1.0, min_level)
    padded = 2 ** math.ceil(math.log2(size))
    return min(int(math.ceil(highest)) + 1, int(math.log2(padded)) + 1)


def _squared_norm(delta: jnp.ndarray) -> jnp.ndarray:
    """dx * dx + dy * dy of (..., 2), each square rounded to float32 before the sum.

    Which neighbour is farthest is decided by the last bit when two distances tie in exact
    arithmetic, and that choice routes the gradient. The reference rounds each square; XLA:CPU
    would fuse a square and the sum into one fused multiply-add with other rounding. The select
    (NaN in, NaN out, so the value is unchanged) keeps the square a value of its own.
    """
    squares = jnp.where(jnp.isnan(delta), delta, delta * delta)
    return squares[..., 0] + squares[..., 1]


def _neighbour_distance(coords: jnp.ndarray) -> jnp.ndarray:
    """Largest distance from each sample to its 4 neighbours (edges replicated), at least 1.

    coords: (N, H, W, 2) in source pixels -> (N, H, W).

    The derivative follows the reference's conventions, not only its values: the clamp at 1
    passes the gradient when the squared distance is exactly 1, and a tie between neighbours
    (left and right, up and down are equal on any affine grid) sends the whole gradient to the
    first of them in the order left, right, up, down, as torch.max over a dimension does.
    jnp.maximum / jnp.max would split it between the tied neighbours.
    """
    padded = jnp.pad(coords, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    neighbours = (
        padded[:, 1:-1, :-2],
        padded[:, 1:-1, 2:],
        padded[:, :-2, 1:-1],
        padded[:, 2:, 1:-1],
    )
    # The clamp at 1 keeps sqrt away from 0 and costs nothing: log2(1) is the lowest level anyway.
    squared = jnp.stack([_squared_norm(n - coords) for n in neighbours])  # (4, N, H, W)
    dists = jnp.sqrt(clamp_inclusive(squared, 1.0, jnp.inf))
    first_max = jnp.argmax(dists, axis=0)[None]  # argmax returns the first of tied maxima
    return jnp.take_along_axis(dists, first_max, axis=0)[0]


def mipmap_levels(
    grid: jnp.ndarray,
    height: int,
    width: int,
    max_num_levels: float = DEFAULT_MAX_LEVELS,
    min_level: float = 0.0,
) -> jnp.ndarray:
    """Continuous stack level per output pixel, (N, Ho, Wo), in [min_level, max_num_levels - 1].

    As in the reference, the grid is converted to source pixels with (size - 1) * (g + 1) / 2
    (align_corners=True style) for this purpose only. Both clamps pass the gradient at their
    bounds, as torch.clamp does (a level of exactly 0 is the common case).
    """
    x = (width - 1.0) * (grid[..., 0] + 1.0) / 2.0
    y = (height - 1.0) * (grid[..., 1] + 1.0) / 2.0
    dist = _neighbour_distance(jnp.stack([x, y], axis=-1))
    levels = clamp_inclusive(jnp.log2(dist), 0.0, max_num_levels - 1.0)
    return clamp_inclusive(levels, min_level, jnp.inf)


def _downsample_2x(x: jnp.ndarray) -> jnp.ndarray:
    return upfirdn2d(_reflect_pad(x, 1, 1), blur_filter(), down=2)


def blur_stack(x: jnp.ndarray, num_levels: int) -> jnp.ndarray:
    """(N, H, W, C) -> (N, D, H, W, C): level i is x blurred and downsampled i times, then
    bilinearly upsampled back to full size.

    Inputs whose width is not a power of two are reflect-padded (by the same amounts on both
    axes, as the reference does) to the next power of two first, and cropped back afterwards.
    """
    height, width = x.shape[1], x.shape[2]
    log_size = math.log2(width)
    pad_before = pad_after = 0
    if not log_size.is_integer():
        total = 2 ** math.ceil(log_size) - width
        pad_before, pad_after = total // 2, total - total // 2
        x = _reflect_pad(x, pad_before, pad_after)
    levels = [x]
    current = x
    for i in range(1, num_levels):
        current = _downsample_2x(current)
        level = resize_bilinear(current, 2.0**i)
        if level.shape != x.shape:
            raise ValueError(
                f"mipmap stack level {i} has spatial size {level.shape[1:3]}, expected "
                f"{x.shape[1:3]}: the input size {(height, width)} cannot be halved {i} times"
            )
        levels.append(level)
    stack = jnp.stack(levels, axis=1)
    if pad_before or pad_after:
        stack = stack[:, :, pad_before : pad_before + height, pad_before : pad_before + width]
    return stack


class MipmapOutput(NamedTuple):
    image: jnp.ndarray  # (N, Ho, Wo, C) warped image
    levels_map: jnp.ndarray  # (N, Ho, Wo) level / (max_num_levels - 1), as the reference exposes it


def mipmap_warp(
    image: jnp.ndarray,
    grid: jnp.ndarray,
    padding_mode: str = "border",
    max_num_levels: float = DEFAULT_MAX_LEVELS,
    min_level: float = 0.0,
) -> MipmapOutput:
    """Anti-aliased grid_sample. image (N, H, W, C), grid (N, Ho, Wo, 2), align_corners=False."""
    n, height, width, channels = image.shape
    levels = mipmap_levels(grid, height, width, max_num_levels, min_level)  # (N, Ho, Wo)
    depth = num_stack_levels(max_num_levels, width, min_level)
    stack = blur_stack(image, depth)  # (N, D, H, W, C)
    # Warp all levels with one gather: levels become extra channels.
    stacked = jnp.moveaxis(stack, 1, 3).reshape(n, height, width, depth * channels)
    warped = grid_sample(stacked, grid, padding_mode)
    warped = warped.reshape(*warped.shape[:3], depth, channels)  # (N, Ho, Wo, D, C)
    weight = (levels - jnp.floor(levels))[..., None]
    # Only images too small to halve that often have fewer levels than the clamp allows (the
    # reference fails there); they use their coarsest level.
    lower = jnp.minimum(jnp.floor(levels), depth - 1.0)
    upper = jnp.minimum(jnp.ceil(levels), depth - 1.0)
    depth_index = jnp.arange(depth, dtype=levels.dtype)

    def pick(level):  # (N, Ho, Wo, C); an exact select (one term is nonzero), cheap to compile
        chosen = (level[..., None] == depth_index)[..., None]  # (N, Ho, Wo, D, 1)
        return jnp.sum(jnp.where(chosen, warped, 0.0), axis=3)

    out_lower, out_upper = pick(lower), pick(upper)
    out = out_lower + weight * (out_upper - out_lower)
    return MipmapOutput(out, levels / (max_num_levels - 1.0))
