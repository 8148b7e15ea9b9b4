"""Inference helpers on a trained STN: flip-aware congealing, keypoint transfer, dataset filtering.

Points are (N, P, 2) pixel (x, y). Pixel <-> normalised conversions use the reference's
`normalize_points` / `unnormalize_points`. Every function here is jit-compatible: wrap it in
`jax.jit(..., static_argnames=(...))` with the STN, sizes, iters and padding mode static.

Mapping points into the congealed image needs the forward warp, but the STN only predicts the
reverse (sampling) warp. As in the reference, a similarity stage is inverted in closed form and a
flow stage by a brute-force nearest-neighbour search over its sampling grid, which yields integer
positions on the flow_size grid.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gangealing_jax.errors import ConfigError
from gangealing_jax.losses.regularizers import total_variation_loss
from gangealing_jax.models.stn import STN, STNOutput
from gangealing_jax.ops.sampling import (
    identity_grid,
    normalize_points,
    sample_points,
    to_3x3,
    unnormalize_points,
)


def mirror(images):
    """Horizontal flip of NHWC images."""
    return images[:, :, ::-1]


def _repeat_rows(x, rows: int):
    """Repeat each of the N rows of x in place so that there are `rows` rows (heads expansion)."""
    return x if x.shape[0] == rows else jnp.repeat(x, rows // x.shape[0], axis=0)


def _source_size(images, source_images) -> int:
    return (images if source_images is None else source_images).shape[2]


def _run(stn: STN, variables, images, source_images, **forward):
    return stn.apply(variables, images, source_images, **forward)


class FlipOutput(NamedTuple):
    image: jnp.ndarray  # (N, R, R, C) congealed input or congealed mirrored input
    grid: jnp.ndarray  # (N, R, R, 2) sampling grid into the *unmirrored* source
    flow: jnp.ndarray  # (N, F, F, 2) residual flow of the chosen branch
    inputs: jnp.ndarray  # (N, H, W, C) the inputs, mirrored where chosen
    flipped: jnp.ndarray  # (N,) bool


def forward_with_flip(stn: STN, variables, images, source_images=None, **forward) -> FlipOutput:
    """Congeal x or mirror(x), whichever gives the smoother residual flow (lower TV).

    Both are run as one batch. `forward` takes STN.__call__ keywords (output_resolution, iters,
    padding_mode, heads, ...).
    """
    n = images.shape[0]
    both = jnp.concatenate([images, mirror(images)])
    both_source = None
    if source_images is not None:
        both_source = jnp.concatenate([source_images, mirror(source_images)])
    if forward.get("heads") is not None:
        forward = dict(forward, heads=jnp.concatenate([forward["heads"]] * 2))
    out = _run(stn, variables, both, both_source, **forward)
    plain = jax.tree_util.tree_map(lambda x: x[:n], out)
    mirrored = jax.tree_util.tree_map(lambda x: x[n:], out)
    return choose_flips(plain, mirrored, images)


def choose_flips(plain: STNOutput, mirrored: STNOutput, images) -> FlipOutput:
    """Per image, keep the STN output of x or of mirror(x), whichever residual flow has the lower
    total variation (ties keep x). A mirrored image's grid gets x negated, so that it samples the
    original image."""
    n = images.shape[0]
    if plain.flow is None:
        raise ConfigError("flip inference compares residual flows: the STN needs a flow stage")
    if plain.image.shape[0] != n:
        raise ConfigError("flip inference needs one warp per image: pass heads= for num_heads > 1")
    flipped = total_variation_loss(mirrored.flow, reduce_batch=False) < total_variation_loss(
        plain.flow, reduce_batch=False
    )

    def choose(a, b):
        return jnp.where(flipped.reshape((n,) + (1,) * (a.ndim - 1)), b, a)

    return FlipOutput(
        image=choose(plain.image, mirrored.image),
        grid=choose(plain.grid, mirrored.grid * jnp.array([-1.0, 1.0], plain.grid.dtype)),
        flow=choose(plain.flow, mirrored.flow),
        inputs=choose(images, mirror(images)),
        flipped=flipped,
    )


def nearest_grid_points(grid, points):
    """Integer (x, y) of the grid cell whose sampling position is nearest to each point.

    grid (M, H, W, 2), points (M, P, 2) normalised -> (M, P, 2) int32. The squared distance is
    expanded as |p|^2 + |g|^2 - 2 g.p, as in the reference.
    """
    m, height, width, _ = grid.shape
    flat = grid.reshape(m, height * width, 1, 2)
    p = points[:, None, :, :]  # (M, 1, P, 2)
    dot = flat[..., 0] * p[..., 0] + flat[..., 1] * p[..., 1]  # (M, HW, P)
    dist = jnp.sum(p**2, axis=-1) + jnp.sum(flat**2, axis=-1) - 2 * dot
    index = jnp.argmin(dist, axis=1)  # (M, P)
    return jnp.stack([index % width, index // width], axis=-1).astype(jnp.int32)


def congealed_points_from_output(
    out: STNOutput,
    points,
    source_size: int,
    *,
    normalize_input_points: bool = True,
    unnormalize_output_points: bool = False,
):
    """Map source points (pixels, or normalised if not normalize_input_points) into the congealed
    image, given the STN output for those images. Rows follow `out` (points are repeated per head).

    With a flow stage the result is an integer (x, y) on the flow_size grid (the unnormalize flag
    is then ignored, as in the reference); otherwise normalised or pixel coordinates.
    """
    rows = out.grid.shape[0]
    p = _repeat_rows(jnp.asarray(points), rows)
    if normalize_input_points:
        p = normalize_points(p, source_size, source_size)
    if out.matrix is not None:
        inverse = jnp.linalg.inv(to_3x3(out.matrix))  # (M, 3, 3)
        p = jnp.einsum("mij,mpj->mpi", inverse[:, :2, :2], p) + inverse[:, None, :2, 2]
        if out.flow is None:
            if unnormalize_output_points:
                p = unnormalize_points(p, source_size, source_size)
            return p
        # The reference hands the similarity stage's pixel output to the flow stage, which
        # normalises it again; the round trip is kept for identical rounding.
        p = normalize_points(
            unnormalize_points(p, source_size, source_size), source_size, source_size
        )
    size = out.flow.shape[1]
    return nearest_grid_points(out.flow + identity_grid(size, size, out.flow.dtype), p)


def source_points_from_output(
    out: STNOutput,
    points_congealed,
    source_size: int,
    *,
    input_size: int | None = None,
    normalize_input_points: bool = False,
    unnormalize_output_points: bool = True,
):
    """Map congealed points back into the source images through the STN output's warp.

    With a flow stage: normalised congealed points are read off the final sampling grid
    (bilinear, border padding); with normalize_input_points they are integer positions on the
    flow grid, normalised as the reference does with (res=input_size, out_res=flow_size).
    Similarity only: closed form with the matrix. Output in source pixels (or normalised).
    """
    rows = out.grid.shape[0]
    p = _repeat_rows(jnp.asarray(points_congealed), rows)
    if out.flow is not None:
        if normalize_input_points:
            p = normalize_points(p, input_size or source_size, out.flow.shape[1])
        p = sample_points(out.grid, p.astype(out.grid.dtype), padding_mode="border")
    else:
        if normalize_input_points:
            p = normalize_points(p, source_size, source_size)
        m = out.matrix
        p = jnp.einsum("mij,mpj->mpi", m[:, :, :2], p) + m[:, None, :, 2]
    if unnormalize_output_points:
        p = unnormalize_points(p, source_size, source_size)
    return p


def congeal_points(
    stn: STN,
    variables,
    images,
    points,
    source_images=None,
    *,
    normalize_input_points: bool = True,
    unnormalize_output_points: bool = False,
    **forward,
):
    """Source points (N, P, 2) -> congealed points; see `congealed_points_from_output`."""
    out = _run(stn, variables, images, source_images, **forward)
    return congealed_points_from_output(
        out,
        points,
        _source_size(images, source_images),
        normalize_input_points=normalize_input_points,
        unnormalize_output_points=unnormalize_output_points,
    )


def uncongeal_points(
    stn: STN,
    variables,
    images,
    points_congealed,
    source_images=None,
    *,
    normalize_input_points: bool = False,
    unnormalize_output_points: bool = True,
    **forward,
):
    """Congealed points (N, P, 2) -> points in `images` (source pixels by default)."""
    out = _run(stn, variables, images, source_images, **forward)
    return source_points_from_output(
        out,
        points_congealed,
        _source_size(images, source_images),
        input_size=images.shape[2],
        normalize_input_points=normalize_input_points,
        unnormalize_output_points=unnormalize_output_points,
    )


def transfer_points(stn: STN, variables, images_a, images_b, points_a, **forward):
    """Keypoints of images_a (N, P, 2 pixels) -> estimated keypoints in images_b (pixels)."""
    out_a = _run(stn, variables, images_a, None, **forward)
    out_b = _run(stn, variables, images_b, None, **forward)
    return transfer_points_from_outputs(
        out_a, out_b, points_a, images_a.shape[2], images_b.shape[2]
    )


def transfer_points_from_outputs(out_a: STNOutput, out_b: STNOutput, points_a, size_a, size_b):
    """Congeal points of A with A's STN output, then uncongeal them with B's (reference
    transfer_points). size_*: the images' widths."""
    congealed = congealed_points_from_output(out_a, points_a, size_a)
    return source_points_from_output(
        out_b, congealed, size_b, input_size=size_b, normalize_input_points=out_b.flow is not None
    )


class FlipMatch(NamedTuple):
    images_a: jnp.ndarray  # (N, H, W, C), mirrored where chosen
    images_b: jnp.ndarray
    points_a: jnp.ndarray  # (N, P, D) with x mirrored (and labels permuted) where chosen
    points_b: jnp.ndarray | None
    pick: jnp.ndarray  # (N,) 0: neither mirrored, 1: A, 2: B, 3: both


def mirror_points(points, flip, width: int, permutation=None):
    """Points (N, P, D) of images (N,) mirrored where flip: x -> width - 1 - x and, with
    `permutation` (P,), labels swapped left/right."""
    x = jnp.where(flip[:, None], width - 1 - points[..., 0], points[..., 0])
    points = points.at[..., 0].set(x)
    if permutation is not None:
        permuted = points[:, jnp.asarray(permutation)]
        points = jnp.where(flip[:, None, None], permuted, points)
    return points


def match_flips(
    stn: STN, variables, images_a, images_b, points_a, points_b=None, permutation=None, **forward
) -> FlipMatch:
    """Mirror A, B, both or neither per pair, whichever pair of residual flows is smoothest.

    Keypoints of a mirrored image get x -> W - 1 - x and, with `permutation` (P,), their labels
    swapped left/right. (The reference applies the permutation to A's points a second time when
    it mirrors B; here B's own points are permuted.)
    """
    n = images_a.shape[0]
    batch = jnp.concatenate([images_a, images_b, mirror(images_a), mirror(images_b)])
    out = _run(stn, variables, batch, None, **forward)
    if out.flow is None or out.flow.shape[0] != 4 * n:
        raise ConfigError("flip matching needs a flow stage and one warp per image")
    tv = total_variation_loss(out.flow, reduce_batch=False).reshape(4, n)
    tv_a, tv_b, tv_af, tv_bf = tv
    pick = jnp.argmin(jnp.stack([tv_a + tv_b, tv_af + tv_b, tv_a + tv_bf, tv_af + tv_bf]), axis=0)
    flip_a, flip_b = pick % 2 == 1, pick >= 2
    width = images_a.shape[2]

    def choose(flip, plain, mirrored):
        return jnp.where(flip[:, None, None, None], mirrored, plain)

    return FlipMatch(
        images_a=choose(flip_a, images_a, mirror(images_a)),
        images_b=choose(flip_b, images_b, mirror(images_b)),
        points_a=mirror_points(jnp.asarray(points_a), flip_a, width, permutation),
        points_b=None
        if points_b is None
        else mirror_points(jnp.asarray(points_b), flip_b, images_b.shape[2], permutation),
        pick=pick,
    )


def warp_exceeds_bounds(grid, image_bounds=None, threshold: float = 0.025):
    """(M,) bool: True where more than `threshold` of the output samples lie outside the image.

    grid (M, H, W, 2). image_bounds (N, 2) = (height, width) of the unpadded image inside a square
    input (rows repeated per head when M = N * K), or None for the whole square input. As in the
    reference's dataset filter.
    """
    out_h, out_w = grid.shape[1], grid.shape[2]
    if image_bounds is None:
        boundary_y = jnp.float32(out_h)
        boundary_x = jnp.float32(out_w)
    else:
        bounds = _repeat_rows(jnp.asarray(image_bounds, jnp.float32), grid.shape[0])
        h, w = bounds[:, 0], bounds[:, 1]
        landscape = h < w
        boundary_y = jnp.round(jnp.where(landscape, out_h * h / w, out_h))[:, None]
        boundary_x = jnp.round(jnp.where(landscape, out_w, out_w * w / h))[:, None]
    gx = jnp.abs(grid[..., 0].reshape(grid.shape[0], -1))
    gy = jnp.abs(grid[..., 1].reshape(grid.shape[0], -1))
    outside_x = jnp.mean((gx > (boundary_x - 1) / out_w).astype(jnp.float32), axis=1) > threshold
    outside_y = jnp.mean((gy > (boundary_y - 1) / out_h).astype(jnp.float32), axis=1) > threshold
    return outside_x | outside_y


def similarity_scale(matrix):
    """(M,) zoom of a similarity matrix (M, 2, 3): sqrt(det); output size * scale = the source
    pixels an aligned image really covers (used to drop low-resolution alignments)."""
    return jnp.sqrt(jnp.linalg.det(matrix[:, :, :2]))


def flow_scores(flow):
    """(M,) negated flow smoothness; low scores flag images the STN struggles with."""
    return -total_variation_loss(flow, reduce_batch=False)
