"""Properties of small randomly initialised spatial transformers: identity at init, heads,
keypoints, flips, bounds, the input mask, and call errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.apps.points import (
    congeal_points,
    forward_with_flip,
    match_flips,
    mirror,
    similarity_scale,
    transfer_points,
    uncongeal_points,
    warp_exceeds_bounds,
)
from gangealing_jax.models.stn import STN, STNConfig, select_heads, unfold_heads
from gangealing_jax.ops.sampling import identity_grid
from tests.tiny_models import perturbed

_TINY_CHANNELS = {1: 8, 2: 8, 4: 8, 8: 8, 16: 8}


def _tiny(
    transforms=("similarity", "flow"),
    num_heads=1,
    supersize=16,
    scale=0.0,
    seed=0,
    antialias=True,
    input_mask="none",
):
    # antialias=False (plain bilinear sampling) halves compile time where sampling is not tested.
    config = STNConfig(
        transforms=transforms,
        flow_size=16,
        supersize=supersize,
        channels=_TINY_CHANNELS,
        num_heads=num_heads,
        antialias=antialias,
        input_mask=input_mask,
    )
    stn = STN(config)
    key, perturb_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = jax.jit(stn.init)(key, jnp.zeros((1, supersize, supersize, 3)))
    if scale:
        variables = perturbed(variables, perturb_key, scale)
    return stn, variables


def _images(n, size, seed=1):
    coarse = jax.random.uniform(jax.random.PRNGKey(seed), (n, 4, 4, 3), minval=-1, maxval=1)
    return jax.image.resize(coarse, (n, size, size, 3), "linear")


def test_fresh_stn_is_identity_and_jits_once():
    stn, variables = _tiny()
    traces = []

    @jax.jit
    def forward(variables, images, alpha):
        traces.append(1)
        return stn.apply(variables, images, alpha=alpha, padding_mode="reflection")

    images = _images(2, 16)
    out = forward(variables, images, jnp.array([0.3, 0.9]))
    forward(variables, _images(2, 16, seed=5), jnp.array([0.5, 0.1]))
    assert len(traces) == 1
    identity = identity_grid(16, 16)
    np.testing.assert_array_equal(out.flow, 0.0)
    np.testing.assert_allclose(out.matrix, jnp.broadcast_to(jnp.eye(2, 3), (2, 2, 3)), atol=1e-7)
    np.testing.assert_allclose(out.grid, jnp.broadcast_to(identity, out.grid.shape), atol=1e-6)
    np.testing.assert_allclose(out.similarity_grid, out.grid, atol=1e-6)
    np.testing.assert_allclose(out.image, images, atol=1e-5)


def test_heads_cartesian_and_assigned_agree():
    stn, variables = _tiny(num_heads=2, supersize=32, scale=0.05, antialias=False)
    heads = jnp.array([1, 0, 1])
    # Scores over 2K columns (the second K = mirrored) pick head argmax % K.
    scores = jax.nn.one_hot(jnp.array([3, 0, 1]), 4)
    np.testing.assert_array_equal(select_heads(scores, 2), heads)

    @jax.jit
    def run(variables, images):
        apply = functools.partial(stn.apply, variables, images, padding_mode="border")
        return apply(), apply(heads=heads), apply(iters=2)

    every, one, iterated = run(variables, _images(3, 32))
    assert every.image.shape == (6, 16, 16, 3) and every.flow.shape == (6, 16, 16, 2)
    rows = np.arange(3) * 2 + np.asarray(heads)
    for field in ("image", "grid", "flow", "matrix", "similarity_image"):
        np.testing.assert_allclose(getattr(one, field), getattr(every, field)[rows], atol=1e-6)
    assert iterated.image.shape == (6, 16, 16, 3)
    assert not np.allclose(iterated.matrix, every.matrix, atol=1e-4)
    # unfold: the same rows viewed per image and head, (N, K, ...).
    unfolded = unfold_heads(every, 2)
    assert unfolded.image.shape == (3, 2, 16, 16, 3) and unfolded.matrix.shape == (3, 2, 2, 3)
    np.testing.assert_array_equal(unfolded.flow[np.arange(3), heads], every.flow[rows])
    with pytest.raises(ValueError, match="heads"):
        unfold_heads(one, 2)


def test_points_round_trip_within_a_pixel():
    stn, variables = _tiny(scale=0.02, seed=3, antialias=False)
    stn_sim, variables_sim = _tiny(("similarity",), scale=0.05, seed=7, antialias=False)
    points = jnp.array(
        [[[4.0, 5.0], [8.5, 10.0], [11.0, 3.0]], [[6.0, 6.0], [9.0, 12.0], [3.0, 8.0]]]
    )

    @jax.jit
    def run(variables, variables_sim, images):
        # Similarity + flow: the nearest-neighbour inversion is exact to the flow grid cell.
        back = transfer_points(stn, variables, images, images, points, padding_mode="border")
        # Similarity only: the closed-form inverse round-trips exactly.
        congealed = congeal_points(
            stn_sim, variables_sim, images, points, unnormalize_output_points=True
        )
        back_sim = uncongeal_points(
            stn_sim, variables_sim, images, congealed, normalize_input_points=True
        )
        matrix = stn_sim.apply(variables_sim, images).matrix
        return back, congealed, back_sim, similarity_scale(matrix), matrix

    back, congealed, back_sim, scale, matrix = run(variables, variables_sim, _images(2, 16, seed=4))
    assert float(jnp.max(jnp.linalg.norm(back - points, axis=-1))) < 1.0
    assert not np.allclose(congealed, points, atol=0.1)
    np.testing.assert_allclose(back_sim, points, atol=1e-3)
    # A similarity's zoom is the length of either column of its linear part.
    np.testing.assert_allclose(
        scale, np.linalg.norm(np.asarray(matrix)[:, :, 0], axis=1), rtol=1e-5
    )
    np.testing.assert_allclose(
        scale, np.linalg.norm(np.asarray(matrix)[:, :, 1], axis=1), rtol=1e-5
    )
    assert not np.allclose(scale, 1.0, atol=1e-3)


def test_flip_inference_on_mirrored_pair():
    stn, variables = _tiny(scale=0.05, seed=11, antialias=False)
    points = jnp.array([[[2.0, 3.0], [10.0, 4.0]]])

    @jax.jit
    def run(variables, a):
        flips = forward_with_flip(stn, variables, jnp.concatenate([a, mirror(a)]))
        return flips, match_flips(stn, variables, a, mirror(a), points, points)

    out, match = run(variables, _images(1, 16, seed=12))
    assert bool(out.flipped[0]) != bool(out.flipped[1])
    np.testing.assert_allclose(out.image[0], out.image[1], atol=1e-5)
    np.testing.assert_allclose(out.inputs[0], out.inputs[1], atol=0)
    np.testing.assert_allclose(out.grid[0, ..., 0], -out.grid[1, ..., 0], atol=1e-6)
    assert int(match.pick[0]) in (1, 2)
    np.testing.assert_array_equal(match.images_a, match.images_b)
    flipped = match.points_a if int(match.pick[0]) == 1 else match.points_b
    np.testing.assert_allclose(flipped[0, :, 0], 15.0 - points[0, :, 0])


def test_out_of_bounds_check():
    identity = jnp.broadcast_to(identity_grid(16, 16), (2, 16, 16, 2))
    np.testing.assert_array_equal(warp_exceeds_bounds(identity), [False, False])
    np.testing.assert_array_equal(warp_exceeds_bounds(identity * 1.5), [True, True])
    # A landscape image padded to a square: rows outside its height count as out of bounds.
    bounds = jnp.array([[50.0, 100.0], [100.0, 100.0]])
    np.testing.assert_array_equal(warp_exceeds_bounds(identity, bounds), [True, False])


def test_disk_input_mask_hides_the_corners():
    """With input_mask="disk" the regressed warp ignores what lies outside the inscribed disk."""
    images = _images(2, 16)
    radius = jnp.linalg.norm(identity_grid(16, 16), axis=-1)
    corners = jnp.where((radius > 1.0)[None, :, :, None], 1.0 - images, images)
    for mask, same in (("disk", True), ("none", False)):
        stn, variables = _tiny(("similarity",), scale=0.05, antialias=False, input_mask=mask)
        forward = jax.jit(lambda x, stn=stn, v=variables: stn.apply(v, x).matrix)
        a, b = forward(images), forward(corners)
        if same:
            np.testing.assert_allclose(a, b, atol=1e-6)
        else:
            assert not np.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="input_mask"):
        STNConfig(input_mask="circle")


def test_config_and_call_errors():
    with pytest.raises(ValueError, match="last stage"):
        STNConfig(transforms=("flow", "similarity"))
    with pytest.raises(ValueError, match="multiple of flow_size"):
        STNConfig(flow_size=32, supersize=48)
    with pytest.raises(ValueError, match="no entry for resolution 2"):
        STN(STNConfig(transforms=("flow",), flow_size=32, supersize=32)).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))
        )
    stn, variables = _tiny(("flow",))
    with pytest.raises(ValueError, match="iters"):
        stn.apply(variables, jnp.zeros((1, 16, 16, 3)), iters=2)
    with pytest.raises(ValueError, match="padding_mode"):
        stn.apply(variables, jnp.zeros((1, 16, 16, 3)), padding_mode="wrap")
