"""Golden parity and properties of the warping ops: affine grids, bilinear sampling, the tent
downsampler, mipmap anti-aliased warping and convex flow upsampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.ops.flow import convex_upsample
from gangealing_jax.ops.mipmap import (
    bilinear_downsample,
    blur_filter,
    mipmap_warp,
    num_stack_levels,
    tent_kernel,
)
from gangealing_jax.ops.sampling import (
    affine_grid,
    apply_affine,
    disk_vignette,
    grid_sample,
    identity_grid,
    lerp,
    normalize_points,
    resize_bilinear,
    similarity_matrix,
    to_3x3,
    unnormalize_points,
)
from tests.golden import assert_close, golden_cases, load_fixture, nchw_to_nhwc

ELEMENTWISE = dict(atol=1e-5)
MIPMAP = dict(atol=5e-5)


def _tags(inputs):
    return [k[len("x_mip_") :] for k in inputs if k.startswith("x_mip_")]


def _mipmap_case(name, tags, modes):
    """'mipmap_<tag>_<grid>_<pm|levels_map>' -> (tag, grid, pm or None)."""
    for tag in sorted(tags, key=len, reverse=True):
        head = f"mipmap_{tag}_"
        if name.startswith(head):
            rest = name[len(head) :]
            if rest.endswith("_levels_map"):
                return tag, rest[: -len("_levels_map")], None
            grid, _, mode = rest.rpartition("_")
            assert mode in modes, f"{name}: unknown padding mode {mode!r}"
            return tag, grid, mode
    raise AssertionError(f"{name}: no input image for this mipmap case")


def _warp_ops_outputs(fx) -> dict:
    """Every output of the fixture, in one jitted program (the blur stacks are shared)."""
    meta, inputs, outputs = fx.meta, fx.inputs, fx.outputs
    height, width = meta["affine_grid_size"][2:]
    max_levels, min_level = meta["mipmap_max_num_levels"], meta["mipmap_min_level"]
    modes = meta["padding_modes"]
    mipmap_keys = sorted(k for k in outputs if k.startswith("mipmap_"))
    images = {}  # NHWC image outputs, compared in NCHW

    def compute(arrays):
        out = {"affine_grid": affine_grid(arrays["theta"], (height, width))}
        for mode in modes:
            # grid_sample is fed the reference's own float32 grid, as it was called.
            out[f"grid_sample_{mode}"] = grid_sample(arrays["x"], arrays["affine_grid"], mode)
            images[f"grid_sample_{mode}"] = True
        for factor in meta["bilinear_down_factors"]:
            out[f"bilinear_down{factor}"] = bilinear_downsample(arrays["x_down"], factor)
            images[f"bilinear_down{factor}"] = True
        for key in mipmap_keys:
            tag, grid_name, mode = _mipmap_case(key, _tags(inputs), modes)
            image, grid = arrays[f"x_mip_{tag}"], arrays[f"grid_mip_{tag}_{grid_name}"]
            warped = mipmap_warp(image, grid, mode or "border", max_levels, min_level)
            out[key] = warped.levels_map if mode is None else warped.image
            images[key] = mode is not None
        return out

    arrays = {
        k: jnp.asarray(nchw_to_nhwc(v) if k.startswith("x") else v) for k, v in inputs.items()
    }
    arrays["affine_grid"] = jnp.asarray(outputs["affine_grid"])
    result = jax.jit(compute)(arrays)
    return {
        k: np.asarray(v).transpose(0, 3, 1, 2) if images.get(k) else np.asarray(v)
        for k, v in result.items()
    }


@pytest.mark.parametrize("path", golden_cases("warp_ops"))
def test_warp_ops_golden(path):
    fx = load_fixture(path)
    meta, outputs = fx.meta, fx.outputs
    assert not meta["align_corners"] and meta["mode"] == "bilinear"
    for factor in meta["bilinear_down_factors"]:
        taps = np.tile(tent_kernel(factor), (meta["bilinear_down_channels"], 1))
        horz = fx.state[f"bilinear_down{factor}/kernel_horz"]
        vert = fx.state[f"bilinear_down{factor}/kernel_vert"]
        np.testing.assert_allclose(horz[:, 0, 0, :], taps, rtol=1e-7)
        np.testing.assert_allclose(vert[:, 0, :, 0], taps, rtol=1e-7)
    np.testing.assert_allclose(fx.state["mipmap/blur_filter"][0, 0], blur_filter(), rtol=1e-7)

    actual = _warp_ops_outputs(fx)
    assert set(actual) == set(outputs), f"outputs not checked: {sorted(set(outputs) - set(actual))}"
    max_levels, min_level = meta["mipmap_max_num_levels"], meta["mipmap_min_level"]
    for key, expected in sorted(outputs.items()):
        tol = MIPMAP if key.startswith("mipmap_") else ELEMENTWISE
        assert_close(actual[key], expected, name=key, **tol)
        if key.endswith("_levels_map"):
            tag, grid_name, _ = _mipmap_case(key, _tags(fx.inputs), ())
            case = meta["mipmap_cases"][f"{tag}_{grid_name}"]
            levels = actual[key] * (max_levels - 1)
            assert abs(levels.max() - case["max_level"]) < 1e-5, key
            side = fx.inputs[f"x_mip_{tag}"].shape[-1]
            assert case["num_levels"] <= num_stack_levels(max_levels, side, min_level), key


def _smooth_image(key, shape):
    coarse = jax.random.normal(key, (shape[0], 4, 4, shape[3]))
    return jax.image.resize(coarse, shape, "linear")


def test_mipmap_at_identity_is_bilinear_sampling():
    image = _smooth_image(jax.random.PRNGKey(1), (2, 24, 24, 3))
    grid = jnp.broadcast_to(identity_grid(24, 24), (2, 24, 24, 2))
    modes = ("border", "reflection", "zeros")

    @jax.jit
    def run(image, grid):
        return [(mipmap_warp(image, grid, m), grid_sample(image, grid, m)) for m in modes]

    for mode, (out, bilinear) in zip(modes, run(image, grid), strict=True):
        np.testing.assert_array_equal(out.levels_map, 0.0, err_msg=mode)
        np.testing.assert_allclose(out.image, bilinear, atol=1e-6, err_msg=mode)
        np.testing.assert_allclose(out.image, image, atol=1e-6, err_msg=mode)


def test_mipmap_blurs_when_zooming_out():
    image = jax.random.normal(jax.random.PRNGKey(2), (1, 32, 32, 1))
    theta = jnp.array([[[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]]])

    @jax.jit
    def run(image, theta):
        grid = affine_grid(theta, (32, 32))
        return mipmap_warp(image, grid, "reflection"), grid_sample(image, grid, "reflection")

    out, aliased = run(image, theta)
    levels = np.asarray(out.levels_map) * 2.5
    assert np.all(levels > 1.9)  # 4x minification -> about level 2
    assert float(jnp.std(out.image)) < 0.6 * float(jnp.std(aliased))


def test_affine_grid_sample_round_trip():
    """Sampling an image that holds its own coordinates is exact (bilinear reproduces linear
    functions), so warping by theta and then by theta^-1 returns the identity inside the image."""
    size = 16
    coords = identity_grid(size, size)[None]  # (1, H, W, 2) image whose pixels are positions

    @jax.jit
    def run(params):
        theta = similarity_matrix(*params)
        forward = grid_sample(coords, affine_grid(theta, (size, size)), "border")
        inverse = jnp.linalg.inv(to_3x3(theta))[:, :2]
        back = grid_sample(forward, affine_grid(inverse, (size, size)), "border")
        return back, apply_affine(inverse, affine_grid(theta, (size, size)))

    back, composed = run(jnp.array([[0.1], [-0.3], [0.05], [-0.1]]))
    inner = slice(4, -4)
    np.testing.assert_allclose(back[0, inner, inner], coords[0, inner, inner], atol=1e-5)
    np.testing.assert_allclose(composed[0], coords[0], atol=1e-6)


def test_disk_vignette_hides_the_padding_of_a_rotation():
    """Rotated with zeros or border padding, an image looks the same inside the disk whose
    pixels sample only within the source's pixel centres; the vignette is zero outside it."""
    size = 32
    images = jax.random.uniform(jax.random.PRNGKey(0), (2, size, size, 3), minval=-1, maxval=1)
    rotations = jnp.arctanh(jnp.array([30.0, -75.0]) / 180.0)
    theta = similarity_matrix(rotations, jnp.zeros(2), jnp.zeros(2), jnp.zeros(2))
    grid = affine_grid(theta, (size, size))
    zeros, border = (disk_vignette(grid_sample(images, grid, p)) for p in ("zeros", "border"))
    radius = jnp.linalg.norm(identity_grid(size, size), axis=-1)
    inside = radius <= 1.0 - 1.0 / size
    assert not np.allclose(grid_sample(images, grid, "zeros"), grid_sample(images, grid, "border"))
    np.testing.assert_allclose(zeros[:, inside], border[:, inside], atol=1e-6)
    np.testing.assert_array_equal(disk_vignette(images)[:, radius >= 1.0], 0.0)
    np.testing.assert_array_equal(disk_vignette(images)[:, radius <= 0.9], images[:, radius <= 0.9])


def test_grid_sample_gradients():
    size = 8
    coords = identity_grid(size, size)[None]
    grid = jnp.array([[[[0.1, -0.2], [0.33, 0.4]]]])  # interior points

    @jax.jit
    def run(image, grid):
        def total(im, g, channel):
            return jnp.sum(grid_sample(im, g, "zeros")[..., channel])

        return jax.grad(total, argnums=1)(image, grid, 0), jax.grad(total)(image, grid, 0)

    grid_grad, image_grad = run(coords, grid)
    # Sampling the x-coordinate image returns x: d/dx = 1, d/dy = 0.
    np.testing.assert_allclose(grid_grad[..., 0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(grid_grad[..., 1], 0.0, atol=1e-6)
    # d/d image: the bilinear weights of the two samples, each summing to one.
    np.testing.assert_allclose(jnp.sum(image_grad), 2.0, rtol=1e-6)


def test_grid_sample_rejects_unknown_padding():
    with pytest.raises(ValueError, match="padding_mode"):
        grid_sample(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 2, 2, 2)), "wrap")


def test_convex_upsample_constant_flow_interior():
    factor = 4
    flow = jnp.full((1, 5, 5, 2), 0.25)
    logits = jax.random.normal(jax.random.PRNGKey(3), (1, 5, 5, 9 * factor * factor))
    up = convex_upsample(flow, logits, factor)
    assert up.shape == (1, 20, 20, 2)
    # Away from the zero-padded border every neighbour equals factor * 0.25.
    np.testing.assert_allclose(up[:, factor:-factor, factor:-factor], 1.0, rtol=1e-6)
    assert float(jnp.max(up[:, :factor])) < 1.0  # the border mixes in zero padding


def test_resize_and_lerp_and_point_normalisation():
    ramp = jnp.arange(8.0)[None, None, :, None] * jnp.ones((1, 8, 1, 1))
    np.testing.assert_array_equal(resize_bilinear(ramp, 1.0), ramp)
    up = resize_bilinear(ramp, 2.0)[0, 0, 1:-1, 0]
    np.testing.assert_allclose(np.diff(up), 0.5, atol=1e-6)
    a, b = jnp.float32(1.0), jnp.float32(3.0)
    assert float(lerp(a, b, 1.0)) == 3.0 and float(lerp(a, b, 0.0)) == 1.0
    points = jnp.array([[[0.0, 63.0], [31.5, 10.0]]])
    np.testing.assert_allclose(
        unnormalize_points(normalize_points(points, 64, 64), 64, 64), points, atol=1e-4
    )
    # normalize(p, S, S) is the align_corners=False pixel-centre mapping.
    np.testing.assert_allclose(
        normalize_points(points, 64, 64), (2 * points + 1) / 64 - 1, atol=1e-6
    )


def test_mipmap_warp_jits_once():
    calls = []

    def traced(image, grid):
        calls.append(1)
        return mipmap_warp(image, grid, "border")

    fn = jax.jit(traced)
    grid = jnp.broadcast_to(identity_grid(6, 6), (1, 6, 6, 2)) * 2.0
    for seed in range(2):
        fn(jax.random.normal(jax.random.PRNGKey(seed), (1, 24, 24, 2)), grid + 0.01 * seed)
    assert len(calls) == 1
