"""The collapse monitor's statistics and warning, and the zoom-out guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import embedded
from gangealing_jax.losses.gangealing import ObjectiveSettings, gangealing_objective
from gangealing_jax.losses.perceptual import multiscale_structural_distance
from gangealing_jax.losses.regularizers import grid_zoom, zoom_out_penalty
from gangealing_jax.ops.sampling import affine_grid, grid_sample
from gangealing_jax.training import collapse
from tests.tiny_models import tiny_objective_inputs


def _similarity(scale, angle=0.0, shift=(0.0, 0.0), n=4):
    c, s = scale * jnp.cos(angle), scale * jnp.sin(angle)
    theta = jnp.array([[c, -s, shift[0]], [s, c, shift[1]]], jnp.float32)
    return affine_grid(jnp.broadcast_to(theta, (n, 2, 3)), (16, 16))


def _images(n=4, seed=0):
    """Smooth random images (N, 16, 16, 3) in [-1, 1]: structure at several scales."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (n, 4, 4, 3)).astype(np.float32)
    return jnp.asarray(np.kron(coarse, np.ones((1, 4, 4, 1), np.float32)))


@pytest.mark.parametrize("scale,angle", [(1.0, 0.0), (0.5, 0.7), (14.0, -0.3), (2.0, 3.0)])
def test_grid_zoom_is_the_similarity_scale_whatever_the_rotation_and_shift(scale, angle):
    zoom = grid_zoom(_similarity(scale, angle, shift=(0.3, -0.2)))
    np.testing.assert_allclose(zoom, scale, rtol=1e-5)


def test_statistics_tell_a_collapsed_warp_from_the_identity():
    images = _images()
    identity = _similarity(1.0)
    healthy = collapse.warp_statistics(identity, grid_sample(images, identity, "border"), images)
    np.testing.assert_allclose(healthy["collapse_zoom_out"], 1.0, rtol=1e-5)
    assert float(healthy["collapse_outside"]) == 0.0
    np.testing.assert_allclose(healthy["collapse_variance_ratio"], 1.0, rtol=1e-4)
    assert collapse.collapse_reasons({k: float(v) for k, v in healthy.items()}) == []

    # The failure seen on the butterflies: a 14x zoom-out whose border padding leaves flat wedges.
    zoomed = _similarity(14.0, 0.2)
    flat = jnp.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape)
    bad = {k: float(v) for k, v in collapse.warp_statistics(zoomed, flat, images).items()}
    np.testing.assert_allclose(bad["collapse_zoom_out"], 14.0, rtol=1e-4)
    assert bad["collapse_outside"] > 0.98  # all but the central 1/14 of each axis
    assert bad["collapse_variance_ratio"] < 1e-6
    assert len(collapse.collapse_reasons(bad)) == 3


def _feed(monitor, values, every=25):
    lines = []
    for i, value in enumerate(values):
        line = monitor.update((i + 1) * every, value)
        if line:
            lines.append(line)
    return lines


HEALTHY = {"collapse_zoom_out": 0.8, "collapse_outside": 0.02, "collapse_variance_ratio": 0.9}
COLLAPSED = {"collapse_zoom_out": 14.0, "collapse_outside": 0.99, "collapse_variance_ratio": 0.3}


def test_warning_fires_once_on_a_sustained_collapse_and_names_the_iteration():
    monitor = collapse.CollapseMonitor(window=200, hint="try X")
    lines = _feed(monitor, [HEALTHY] * 4 + [COLLAPSED] * 20)
    assert len(lines) == 1
    # Collapsed from iteration 125; 200 iterations later is 325.
    assert "iteration 325" in lines[0] and "since 125" in lines[0] and "try X" in lines[0]
    assert "zoom-out 14.0x" in lines[0]
    summary = monitor.summary()
    assert summary["warning"] and summary["fired_at"] == 325
    assert summary["worst"]["collapse_zoom_out"] == 14.0
    assert summary["last"] == COLLAPSED
    assert summary["thresholds"]["zoom_out"] == collapse.ZOOM_OUT_LIMIT


def test_no_warning_on_a_healthy_run_or_a_short_excursion():
    monitor = collapse.CollapseMonitor(window=200)
    excursion = [HEALTHY] * 5 + [COLLAPSED] * 7 + [HEALTHY] + [COLLAPSED] * 7 + [HEALTHY] * 5
    assert _feed(monitor, excursion) == []  # 150 iterations each time: under the window
    assert _feed(collapse.CollapseMonitor(), [HEALTHY] * 200) == []
    summary = monitor.summary()
    assert not summary["warning"] and summary["fired_at"] is None
    assert _feed(collapse.CollapseMonitor(), [{"loss": 1.0}] * 50) == []  # nothing to judge


def test_zoom_out_penalty_punishes_the_zoomed_out_warp_and_spares_aligned_ones():
    assert float(zoom_out_penalty(_similarity(1.0), 1.5)) == 0.0
    assert float(zoom_out_penalty(_similarity(0.4, 0.5), 1.5)) == 0.0  # zooming in is alignment
    zoomed = float(zoom_out_penalty(_similarity(14.0), 1.5))
    np.testing.assert_allclose(zoomed, np.log(14.0 / 1.5) ** 2, rtol=1e-4)
    assert zoomed > float(zoom_out_penalty(_similarity(3.0), 1.5)) > 0.0
    # Its gradient pulls the scale back in.
    grad = jax.grad(lambda s: zoom_out_penalty(_similarity(s), 1.5))(3.0)
    assert float(grad) > 0


def test_objective_adds_the_weighted_penalty_and_weight_zero_changes_nothing():
    generator, stn, trainable, frozen, z = tiny_objective_inputs()

    def run(**fields):
        settings = ObjectiveSettings(inject=3, tv_weight=10.0, **fields)
        return gangealing_objective(
            trainable, frozen, z, None, jnp.float32(0.0), multiscale_structural_distance,
            generator=generator, stn=stn, settings=settings,
        )  # fmt: skip

    plain = run()
    off = run(zoom_out_weight=0.0, zoom_out_max=0.1)
    assert float(off.zoom_out) == 0.0
    np.testing.assert_array_equal(off.total, plain.total)
    np.testing.assert_array_equal(off.aligned_pred, plain.aligned_pred)
    # The untrained STN is the identity: its grids spread 1 image width, 10x the bound of 0.1.
    on = run(zoom_out_weight=2.0, zoom_out_max=0.1)
    np.testing.assert_allclose(on.zoom_out, np.log(10.0) ** 2, rtol=1e-3)
    np.testing.assert_allclose(on.total, plain.total + 2.0 * on.zoom_out, rtol=1e-6)
    assert on.grid.shape == (3, 16, 16, 2)


def test_statistics_are_means_over_rows_so_any_split_of_the_batch_agrees():
    # Two heads per input (rows image-major): each congealed copy is compared with its own input.
    images = _images(4, seed=1)
    grid = jnp.concatenate([_similarity(1.0, n=4), _similarity(6.0, n=4)])  # 8 rows
    dimmed = jnp.tile(jnp.array([1.0, 0.1]), 4)[:, None, None, None]  # the second head's copies
    congealed = jnp.repeat(images, 2, axis=0) * dimmed
    whole = collapse.warp_statistics(grid, congealed, images)
    # Split by images, as devices and micro-batches split the batch.
    first = collapse.warp_statistics(grid[:4], congealed[:4], images[:2])
    second = collapse.warp_statistics(grid[4:], congealed[4:], images[2:])
    for key in collapse.KEYS:
        np.testing.assert_allclose(whole[key], (first[key] + second[key]) / 2, rtol=1e-5)
    np.testing.assert_allclose(whole["collapse_variance_ratio"], (1.0 + 0.01) / 2, rtol=1e-4)


def _small_object_scene(n=4, size=32, seed=2):
    """A small left-right symmetric object (a quarter of the side) centred on an asymmetric,
    busy background: the butterflies' situation in miniature."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (n, 8, 8, 3)).astype(np.float32)
    images = np.kron(coarse, np.ones((1, size // 8, size // 8, 1), np.float32))
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    body = (np.abs(xx) / 5) ** 2 + (yy / 3) ** 2 < 1  # an ellipse: mirror-symmetric
    images[:, body] = [0.9, 0.6, -0.8]
    return jnp.asarray(images)


def test_the_guard_makes_the_flat_patch_lose_where_the_symmetry_term_prefers_it():
    images = _small_object_scene()
    aligned_grid = affine_grid(jnp.broadcast_to(jnp.eye(2, 3), (4, 2, 3)), (32, 32))
    zoomed_grid = affine_grid(jnp.broadcast_to(14.0 * jnp.eye(2, 3), (4, 2, 3)), (32, 32))
    aligned = grid_sample(images, aligned_grid, "border")
    flat = grid_sample(images, zoomed_grid, "border")  # wedges of edge colour

    def symmetry(x):
        return float(jnp.mean(multiscale_structural_distance(x, jnp.flip(x, axis=2))))

    # The driver of the collapse: a mirror-symmetry prior finds the flat patch more symmetric
    # than the aligned object on its asymmetric background.
    assert symmetry(flat) < symmetry(aligned)
    # With the guard at the embedded recipe's weight and bound, the flat patch costs more.
    recipe = embedded.get_config()
    weight, bound = recipe.zoom_out_weight, recipe.zoom_out_max
    assert weight > 0 and recipe.symmetry_weight > 0
    assert float(zoom_out_penalty(aligned_grid, bound)) == 0.0

    def cost(x, grid):
        return recipe.symmetry_weight * symmetry(x) + weight * float(zoom_out_penalty(grid, bound))

    assert cost(flat, zoomed_grid) > cost(aligned, aligned_grid) + 1.0
