"""Regularisers on the warps the STN predicts.

Flows are (N, H, W, 2) arrays in normalised coordinates. The two flow losses reduce exactly as the
reference implementation does: a mean over every element (or over every element of one sample).
"""

from __future__ import annotations

import jax.numpy as jnp

from gangealing_jax.ops.sampling import compose_affine, to_3x3


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


def pose_equivariance_loss(matrix_posed, matrix_plain, poses):
    """How far the congealing of a posed copy of an image is from that of the image. Scalar.

    A copy T x of x (x(T p) at output point p) congealed by the similarity M' samples x at T M' p;
    it agrees with x congealed by M when E = M^-1 T M' is the identity. The loss is the mean
    squared distance |E p - p|^2 over output points p uniform in [-1, 1]^2, in closed form
    |t_E|^2 + |A_E - I|_F^2 / 3. Being measured in the congealed frame, it cannot be lowered by
    zooming into a point (which would shrink any distance measured in the input frame).

    Args:
      matrix_posed: (M, 2, 3) similarity matrices M' of the posed copies.
      matrix_plain: (M, 2, 3) matrices M of the images themselves.
      poses: (M, 2, 3) the affine matrices T (F.affine_grid convention) that made the copies.
    """
    plain_inverse = jnp.linalg.inv(to_3x3(matrix_plain))
    error = plain_inverse @ to_3x3(compose_affine(poses, matrix_posed))  # (M, 3, 3)
    linear = error[:, :2, :2] - jnp.eye(2, dtype=error.dtype)
    shift = error[:, :2, 2]
    return jnp.mean(jnp.sum(jnp.square(shift), -1) + jnp.sum(jnp.square(linear), (1, 2)) / 3.0)


def mirror_equivariance_loss(matrix_mirrored, matrix):
    """How far the congealing of a mirrored image is from the mirror of the image's congealing.

    The mirror S x samples x at S p (S = diag(-1, 1)). Congealed by M' it should equal x congealed
    by M and then mirrored, x(M S q), i.e. S M' S = M: the pose-equivariance loss of the copy made
    by the pose S, with M' S in place of M'. With an STN that is also equivariant to rotations,
    this pins the congealed pose of a left-right symmetric object upright (a tilt of d for x would
    need a tilt of -d for its mirror, which is the same object rotated). Scalar.

    Args:
      matrix_mirrored: (M, 2, 3) similarity matrices M' of the mirrored images.
      matrix: (M, 2, 3) matrices M of the images themselves.
    """
    reflect = jnp.broadcast_to(
        jnp.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], matrix.dtype), matrix.shape
    )
    return pose_equivariance_loss(compose_affine(matrix_mirrored, reflect), matrix, reflect)


def grid_zoom(grid):
    """(M,) how much wider than the image each sampling grid (M, H, W, 2) spreads: 1 at the
    identity, s for a similarity of scale s (rotation and shift do not change it), > 1 zooming out.

    The ratio of the grid's coordinate spread to that of the identity grid (pixel centres of
    [-1, 1], variance (n^2 - 1) / (3 n^2) per axis), so it applies to any warp, flows included.
    """
    h, w = grid.shape[1], grid.shape[2]
    identity = (w * w - 1) / (3.0 * w * w) + (h * h - 1) / (3.0 * h * h)
    spread = jnp.var(grid[..., 0], axis=(1, 2)) + jnp.var(grid[..., 1], axis=(1, 2))
    return jnp.sqrt(spread / identity)


def zoom_out_penalty(grid, max_zoom: float):
    """Mean squared log-zoom beyond `max_zoom` of sampling grids (M, H, W, 2). Scalar.

    A warp that spreads its grid over more than max_zoom image widths samples fewer source pixels
    than its output has (cf. the effective resolution of apps/filter.py); padding then fills most
    of the output with clamped edge colour, which a perceptual or mirror-symmetry distance can find
    cheaper than aligning. Zero for every warp within the bound, so it leaves alignment alone.
    """
    excess = jnp.log(jnp.maximum(grid_zoom(grid), 1e-6)) - jnp.log(max_zoom)
    return jnp.mean(jnp.square(jnp.maximum(excess, 0.0)))
