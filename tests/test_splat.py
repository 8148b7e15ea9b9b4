"""Gaussian splatting: placement, weight conservation, reference weights, gradients, jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.ops.splat import normalize_splat, splat_points

_STATIC = ("height", "width", "sigma", "truncate", "normalize_per_point")
splat = jax.jit(splat_points, static_argnames=_STATIC)  # eager dispatch is slower than compiling


def _reference_splat(points, values, height, width, sigma):
    """The reference CUDA kernel's sums, written as loops: unnormalised Gaussian, window from
    floor(x - 2 sigma) to ceil(x + 2 sigma) clamped to the image, out-of-image points ignored."""
    n, p, c = values.shape
    acc = np.zeros((n, height, width, c))
    weight = np.zeros((n, height, width, 1))
    for b in range(n):
        for (x, y), v in zip(points[b], values[b], strict=True):
            if not (0 <= x < width and 0 <= y < height):
                continue
            top, bottom = (
                max(0, math.floor(y - 2 * sigma)),
                min(height - 1, math.ceil(y + 2 * sigma)),
            )
            left, right = (
                max(0, math.floor(x - 2 * sigma)),
                min(width - 1, math.ceil(x + 2 * sigma)),
            )
            for row in range(top, bottom + 1):
                for col in range(left, right + 1):
                    w = math.exp(-((col - x) ** 2 + (row - y) ** 2) / (2 * sigma**2))
                    weight[b, row, col, 0] += w
                    acc[b, row, col] += w * v
    return acc, weight


def test_tiny_sigma_lands_on_the_nearest_pixel():
    points = np.array([[[3.0, 5.0], [0.0, 0.0], [7.3, 2.6]]], np.float32)  # (1, 3, 2)
    values = np.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], np.float32)
    out = splat(points, values, 8, 9, sigma=0.05)
    weight = np.asarray(out.weight[0, ..., 0])
    expected = np.zeros((8, 9))
    expected[5, 3] = expected[0, 0] = expected[3, 7] = 1.0  # (row, col) = (round y, round x)
    np.testing.assert_allclose(weight, expected, atol=1e-6)
    np.testing.assert_allclose(out.accumulated[0, 5, 3], [1.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(out.accumulated[0, 3, 7], [5.0, 6.0], atol=1e-6)


def test_total_weight_counts_points_inside():
    rng = np.random.default_rng(0)
    points = rng.uniform(6.0, 14.0, size=(2, 5, 2)).astype(np.float32)  # windows stay inside
    values = rng.normal(size=(2, 5, 3)).astype(np.float32)
    out = splat(points, values, 20, 21, sigma=1.3)
    np.testing.assert_allclose(out.weight.sum(axis=(1, 2, 3)), [5.0, 5.0], rtol=1e-5)
    np.testing.assert_allclose(out.accumulated.sum(axis=(1, 2)), values.sum(axis=1), atol=1e-4)
    centre = np.asarray(out.weight[0, ..., 0])
    # The mass sits around the point: its weighted mean position is the point itself.
    rows, cols = np.mgrid[:20, :21]
    one = splat(points[:1, :1], values[:1, :1], 20, 21, sigma=1.3).weight[0, ..., 0]
    np.testing.assert_allclose([(cols * one).sum(), (rows * one).sum()], points[0, 0], atol=1e-3)
    assert centre.max() < 1.0


def test_border_and_outside_points():
    points = np.array([[[0.0, 4.0], [-0.5, 4.0], [4.0, 8.0]]], np.float32)
    values = np.ones((1, 3, 1), np.float32)
    out = splat(points, values, 8, 8, sigma=1.0)
    total = float(out.weight.sum())
    # The first point loses its left half (less the centre column); the others are ignored.
    assert 0.5 < total < 0.75
    hidden = splat(points, values, 8, 8, sigma=1.0, visible=np.array([[0.0, 1, 1]]))
    assert float(hidden.weight.sum()) == 0.0


def test_unnormalised_weights_match_reference_kernel():
    rng = np.random.default_rng(1)
    points = rng.uniform(-1.0, 12.0, size=(2, 6, 2)).astype(np.float32)  # some near/out of edges
    points[0, 0] = (4.0, 3.0)  # exactly on a pixel centre
    values = rng.normal(size=(2, 6, 3)).astype(np.float32)
    sigma = 1.2
    out = splat(points, values, 11, 12, sigma, truncate=2.0, normalize_per_point=False)
    acc, weight = _reference_splat(points.astype(np.float64), values, 11, 12, sigma)
    np.testing.assert_allclose(out.weight, weight, atol=1e-5)
    np.testing.assert_allclose(out.accumulated, acc, atol=1e-5)
    np.testing.assert_allclose(
        normalize_splat(out.accumulated, out.weight, soft=True),
        acc / (np.maximum(weight, 1.0) + 1e-8),
        atol=1e-5,
    )


def test_normalize_splat():
    acc = jnp.array([[[[2.0], [0.3]]]])
    weight = jnp.array([[[[4.0], [0.5]]]])
    np.testing.assert_allclose(normalize_splat(acc, weight), [[[[0.5], [0.6]]]], rtol=1e-6)
    np.testing.assert_allclose(normalize_splat(acc, weight, soft=True), [[[[0.5], [0.3]]]])
    assert float(normalize_splat(jnp.zeros((1, 1, 1, 1)), jnp.zeros((1, 1, 1, 1)))[0, 0, 0, 0]) == 0


@jax.jit
def _loss(points, values, target):
    out = splat_points(points, values, 10, 10, sigma=1.1)
    return jnp.sum(normalize_splat(out.accumulated, out.weight) * target) + jnp.sum(out.weight**2)


def test_gradients_are_finite_and_match_finite_differences():
    rng = np.random.default_rng(2)
    points = jnp.asarray(rng.uniform(2.0, 7.0, size=(1, 4, 2)), jnp.float32)
    values = jnp.asarray(rng.normal(size=(1, 4, 2)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(1, 10, 10, 2)), jnp.float32)
    grad_points, grad_values = jax.jit(jax.grad(_loss, argnums=(0, 1)))(points, values, target)
    assert np.all(np.isfinite(grad_points)) and np.all(np.isfinite(grad_values))
    assert np.abs(grad_points).max() > 0 and np.abs(grad_values).max() > 0
    direction = jnp.asarray(rng.normal(size=points.shape), jnp.float32)
    step = 1e-2
    numeric = (
        _loss(points + step * direction, values, target)
        - _loss(points - step * direction, values, target)
    ) / (2 * step)
    np.testing.assert_allclose(jnp.sum(grad_points * direction), numeric, rtol=2e-2, atol=1e-3)


def test_jit_matches_eager():
    rng = np.random.default_rng(3)
    points = rng.uniform(0.0, 9.0, size=(2, 7, 2)).astype(np.float32)
    values = rng.normal(size=(2, 7, 3)).astype(np.float32)
    fast = splat(points, values, height=9, width=10, sigma=0.8)
    slow = splat_points(points, values, 9, 10, 0.8)
    np.testing.assert_allclose(fast.accumulated, slow.accumulated, atol=1e-6)
    np.testing.assert_allclose(fast.weight, slow.weight, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.0, -1.0, jnp.float32(1.0)])
def test_bad_sigma_is_refused(sigma):
    with pytest.raises(ValueError, match="sigma"):
        splat_points(np.zeros((1, 1, 2)), np.zeros((1, 1, 1)), 4, 4, sigma)
