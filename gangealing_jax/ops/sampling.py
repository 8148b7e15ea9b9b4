"""Sampling grids, bilinear sampling and similarity matrices (torch `align_corners=False` semantics).

Conventions: images are NHWC; grids are (N, H, W, 2) holding normalised (x, y) in [-1, 1] with
pixel centres at (2i + 1) / size - 1; affine matrices are (N, 2, 3) mapping output normalised
coordinates to input normalised coordinates (the `F.affine_grid` convention).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

PADDING_MODES = ("zeros", "border", "reflection")


def lerp(start, end, weight):
    """torch.lerp: the two-branch formula, so results agree to the last bit with the reference."""
    weight = jnp.asarray(weight)
    diff = end - start
    return jnp.where(jnp.abs(weight) < 0.5, start + weight * diff, end - diff * (1.0 - weight))


def _centres(size: int, dtype) -> jnp.ndarray:
    """Normalised pixel-centre coordinates of one axis: (2i + 1) / size - 1."""
    return (2.0 * jnp.arange(size, dtype=dtype) + 1.0) / size - 1.0


def identity_grid(height: int, width: int, dtype=jnp.float32) -> jnp.ndarray:
    """(H, W, 2) grid that samples every pixel centre of an H x W image at itself."""
    xs = _centres(width, dtype)
    ys = _centres(height, dtype)
    return jnp.stack(jnp.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1)


def apply_affine(theta: jnp.ndarray, grid: jnp.ndarray) -> jnp.ndarray:
    """Map every (x, y) of `grid` (N, H, W, 2) through `theta` (N, 2, 3): theta @ [x, y, 1]."""
    x, y = grid[..., 0], grid[..., 1]
    t = theta[:, None, None]  # (N, 1, 1, 2, 3)
    new_x = t[..., 0, 0] * x + t[..., 0, 1] * y + t[..., 0, 2]
    new_y = t[..., 1, 0] * x + t[..., 1, 1] * y + t[..., 1, 2]
    return jnp.stack([new_x, new_y], axis=-1)


def affine_grid(theta: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """F.affine_grid(theta, (N, C, H, W), align_corners=False): theta (N, 2, 3) -> (N, H, W, 2)."""
    height, width = size
    base = identity_grid(height, width, theta.dtype)[None]
    return apply_affine(theta, jnp.broadcast_to(base, (theta.shape[0], height, width, 2)))


def similarity_matrix(rot, scale, shift_x, shift_y) -> jnp.ndarray:
    """Raw regressed similarity parameters (each (...,)) -> (..., 2, 3) matrices.

    rotation = pi * tanh(rot), uniform scale = exp(scale), as the reference's SimilarityHead.
    """
    angle = jnp.tanh(rot) * math.pi
    s = jnp.exp(scale)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rows = [s * cos, -s * sin, shift_x, s * sin, s * cos, shift_y]
    return jnp.stack(rows, axis=-1).reshape(*jnp.shape(rot), 2, 3)


def to_3x3(matrix: jnp.ndarray) -> jnp.ndarray:
    """(..., 2, 3) affine -> (..., 3, 3) homogeneous matrix with last row (0, 0, 1)."""
    last = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0], matrix.dtype), (*matrix.shape[:-2], 1, 3))
    return jnp.concatenate([matrix, last], axis=-2)


def compose_affine(outer: jnp.ndarray, inner: jnp.ndarray) -> jnp.ndarray:
    """outer @ [inner; 0 0 1]: apply `inner` first, then `outer` (both (..., 2, 3))."""
    return jnp.matmul(outer, to_3x3(inner), precision=jax.lax.Precision.HIGHEST)


def normalize_points(points, res: int, out_res: int):
    """Pixel coordinates on an `out_res` grid -> normalised coordinates of a `res` image.

    (p / (out_res - 1) - 0.5) * 2 * (res - 1) / res, exactly the reference's
    SpatialTransformer.normalize (note the align_corners=True-style pixel mapping it uses).
    """
    points = jnp.asarray(points)
    if not jnp.issubdtype(points.dtype, jnp.floating):
        points = points.astype(jnp.float32)
    return (points / (out_res - 1) + (-0.5)) * 2 * ((res - 1) / res)


def unnormalize_points(points, res: int, out_res: int):
    """Inverse of `normalize_points`: normalised coordinates -> pixel coordinates."""
    return (points / ((res - 1) / res) / 2 + 0.5) * (out_res - 1)


def clamp_inclusive(x, low, high):
    """Clamp whose gradient passes wherever low <= x <= high, bounds included (torch.clamp).

    jnp.clip splits the gradient of a value lying exactly on a bound; the reference's clamps do
    not, and levels that sit exactly at a bound (log2 of a distance clamped to 1 is exactly 0)
    are common.
    """
    inside = (x >= low) & (x <= high)
    return jnp.where(inside, x, jax.lax.stop_gradient(jnp.clip(x, low, high)))


def _clip_coordinate(pix, size: int):
    """Clamp pixel coordinates to [0, size - 1]; a coordinate ON a border gets no gradient.

    That is torch's grid_sample convention (its kernels treat the borders as out of bounds for
    the gradient), so border and reflection padding differentiate as the reference does.
    """
    inside = (pix > 0.0) & (pix < size - 1.0)
    return jnp.where(inside, pix, jax.lax.stop_gradient(jnp.clip(pix, 0.0, size - 1.0)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _reflect_pixels(coord, twice_span: float):
    """Reflect source pixel coordinates about -0.5 and size - 0.5 (align_corners=False).

    Folds by whole double spans first, then mirrors once: the same arithmetic as torch's CPU
    kernel, which matters for grids far outside [-1, 1].
    """
    low = -0.5
    dist = jnp.abs(coord - low)
    extra = dist - jnp.trunc(dist / twice_span) * twice_span
    return jnp.minimum(extra, twice_span - extra) + low


@_reflect_pixels.defjvp
def _reflect_pixels_jvp(twice_span, primals, tangents):
    # The derivative is +-1: negative iff exactly one of "left of the low edge" and "mirrored once
    # more" holds, with the strict comparisons of torch's kernel (ties keep the sign +1). The
    # min/abs of the value would otherwise split or zero the gradient at those ties.
    (coord,) = primals
    low = -0.5
    dist = jnp.abs(coord - low)
    extra = dist - jnp.trunc(dist / twice_span) * twice_span
    mirrored = extra > twice_span - extra
    sign = jnp.where(mirrored ^ (coord - low < 0.0), -1.0, 1.0).astype(coord.dtype)
    return _reflect_pixels(coord, twice_span), sign * tangents[0]


def _source_coordinate(coord, size: int, padding_mode: str):
    """Normalised coordinate -> continuous pixel index on one axis, padding applied."""
    pix = (coord + 1.0) * (size / 2.0) - 0.5
    if padding_mode == "border":
        pix = _clip_coordinate(pix, size)
    elif padding_mode == "reflection":
        pix = _clip_coordinate(_reflect_pixels(pix, 2.0 * size), size)
    elif padding_mode != "zeros":
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return pix


def grid_sample(image: jnp.ndarray, grid: jnp.ndarray, padding_mode: str = "zeros") -> jnp.ndarray:
    """Bilinear F.grid_sample(align_corners=False). image (N, H, W, C), grid (N, Ho, Wo, 2).

    Returns (N, Ho, Wo, C). Corners outside the image contribute zero (after border or reflection
    padding has moved the coordinate inside, only a zero-weight corner can still fall outside).
    Differentiable with respect to both the image and the grid.
    """
    n, height, width, channels = image.shape
    _, out_h, out_w, _ = grid.shape
    x = _source_coordinate(grid[..., 0], width, padding_mode)  # (N, Ho, Wo)
    y = _source_coordinate(grid[..., 1], height, padding_mode)
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    x1, y1 = x0 + 1.0, y0 + 1.0
    corners = (
        (x0, y0, (x1 - x) * (y1 - y)),
        (x1, y0, (x - x0) * (y1 - y)),
        (x0, y1, (x1 - x) * (y - y0)),
        (x1, y1, (x - x0) * (y - y0)),
    )
    flat = image.reshape(n, height * width, channels)
    out = jnp.zeros((n, out_h * out_w, channels), image.dtype)
    for cx, cy, weight in corners:
        inside = (cx >= 0) & (cx <= width - 1) & (cy >= 0) & (cy <= height - 1)
        ix = jnp.clip(cx, 0, width - 1).astype(jnp.int32)
        iy = jnp.clip(cy, 0, height - 1).astype(jnp.int32)
        index = (iy * width + ix).reshape(n, out_h * out_w, 1)
        values = jnp.take_along_axis(flat, index, axis=1)  # (N, Ho*Wo, C)
        weight = jnp.where(inside, weight, 0.0).reshape(n, out_h * out_w, 1)
        out = out + values * weight
    return out.reshape(n, out_h, out_w, channels)


def sample_points(field: jnp.ndarray, points: jnp.ndarray, padding_mode: str = "border"):
    """Bilinearly read a field (N, H, W, C) at normalised points (N, P, 2) -> (N, P, C)."""
    return grid_sample(field, points[:, :, None, :], padding_mode)[:, :, 0, :]


def _resize_axis(x: jnp.ndarray, axis: int, out_size: int, scale: float | None):
    """Linear resampling along one axis as torch's upsample_bilinear2d(align_corners=False).

    Sizes are static, so indices and weights are computed once here, in float32 as torch does.
    """
    in_size = x.shape[axis]
    step = np.float32((1.0 / scale) if scale else in_size / out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = np.maximum((dst + np.float32(0.5)) * step - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    lam0 = np.float32(1.0) - lam1
    shape = [1] * x.ndim
    shape[axis] = out_size
    a = jnp.take(x, i0, axis=axis)
    b = jnp.take(x, i1, axis=axis)
    return a * lam0.reshape(shape).astype(x.dtype) + b * lam1.reshape(shape).astype(x.dtype)


def resize_bilinear(x: jnp.ndarray, scale_factor: float) -> jnp.ndarray:
    """F.interpolate(x, scale_factor=s, mode='bilinear', align_corners=False) on NHWC input.

    The output size is floor(size * s) and source positions use 1 / s, as torch does when it is
    given a scale factor.
    """
    out_h = int(math.floor(x.shape[1] * scale_factor))
    out_w = int(math.floor(x.shape[2] * scale_factor))
    x = _resize_axis(x, 2, out_w, scale_factor)
    return _resize_axis(x, 1, out_h, scale_factor)


def disk_vignette(images: jnp.ndarray, inner: float = 0.9) -> jnp.ndarray:
    """Fade (N, H, W, C) images to 0 (mid-grey in [-1, 1]) outside the inscribed disk.

    Full weight inside radius `inner`, falling linearly to 0 at radius 1 (normalised
    coordinates). A rotation about the centre maps the disk onto itself, so an image rotated
    with padding and the same image drawn rotated look alike inside it: the padded corners,
    whose edges give the angle away, are hidden.
    """
    h, w = images.shape[1:3]
    grid = identity_grid(h, w, images.dtype)
    radius = jnp.sqrt(jnp.sum(grid**2, axis=-1))
    weight = jnp.clip((1.0 - radius) / (1.0 - inner), 0.0, 1.0)
    return images * weight[None, :, :, None]
