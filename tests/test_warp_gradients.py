"""Gradients of the warping ops against torch oracles: F.grid_sample in every padding mode, and the
mipmap warp (its level arithmetic written out in torch), at non-square, non-power-of-two sizes,
on warps that zoom out (levels > 0) and sample beyond the border.

Where a derivative is defined by convention rather than by the maths (a clamp at its bound, a
coordinate on the border, a tie between neighbour distances), ours follows torch's.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gangealing_jax.ops.mipmap import mipmap_levels, mipmap_warp
from gangealing_jax.ops.sampling import (
    affine_grid,
    clamp_inclusive,
    grid_sample,
    identity_grid,
    similarity_matrix,
)
from tests.golden import assert_close

MODES = ("zeros", "border", "reflection")
MAX_LEVELS = 3.5


def _nhwc(x):
    return np.transpose(np.asarray(x), (0, 2, 3, 1))


def _nchw(x):
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


def _zoom_out_grid(rng, n, out_hw, zoom=(1.0, 4.0), wobble=0.0):
    """Rotated, shifted, zoomed-out affine grids (optionally perturbed), reaching past [-1, 1]."""
    angle = rng.uniform(-0.6, 0.6, n)
    scale = np.exp(rng.uniform(math.log(zoom[0]), math.log(zoom[1]), n))
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = scale * np.cos(angle)
    theta[:, 0, 1] = -scale * np.sin(angle)
    theta[:, 1, 0] = scale * np.sin(angle)
    theta[:, :, 2] = rng.uniform(-0.5, 0.5, (n, 2))
    grid = np.asarray(affine_grid(jnp.asarray(theta), out_hw))
    return (grid + wobble * rng.standard_normal(grid.shape)).astype(np.float32)


def _smooth(rng, n, c, h, w):
    coarse = torch.tensor(rng.standard_normal((n, c, 5, 5)).astype(np.float32))
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).numpy()


# ---- torch oracles --------------------------------------------------------------------------


def _torch_levels(grid, height, width, max_levels=MAX_LEVELS):
    """Mipmap level per output pixel, the reference's arithmetic written out in torch."""
    x = (width - 1.0) * (grid[..., 0] + 1.0) / 2.0
    y = (height - 1.0) * (grid[..., 1] + 1.0) / 2.0
    coords = torch.stack([x, y], 3)
    padded = F.pad(coords.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate").permute(0, 2, 3, 1)
    sides = [padded[:, 1:-1, :-2], padded[:, 1:-1, 2:], padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]]
    squared = [torch.sum((side - coords) ** 2, 3).clamp(min=1.0) for side in sides]
    # A correctly rounded square root: torch's own float32 sqrt is off by one ulp for some inputs
    # on some CPU builds, which would decide ties between equal distances by noise.
    dists = torch.stack([s.double().sqrt().float() for s in squared])
    farthest, _ = torch.max(dists, 0)  # a tie goes to the first: left, right, up, down
    return torch.log2(farthest).clamp(min=0.0, max=max_levels - 1.0)


def _torch_stack(image, num_levels):
    """(N, C, D, H, W): level i blurred and halved i times, then upsampled back to full size."""
    width = image.shape[-1]
    pad = 2 ** math.ceil(math.log2(width)) - width
    before, after = pad // 2, pad - pad // 2
    if pad:
        image = F.pad(image, (before, after, before, after), mode="reflect")
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = (taps[:, None] * taps[None]) / 64.0
    levels, current = [image], image
    for i in range(1, num_levels):
        c = current.shape[1]
        current = F.conv2d(
            F.pad(current, (1, 1, 1, 1), mode="reflect"),
            kernel[None, None].repeat(c, 1, 1, 1),
            stride=2,
            groups=c,
        )
        levels.append(F.interpolate(current, scale_factor=2.0**i, mode="bilinear"))
    stack = torch.stack(levels, 2)
    if pad:
        stack = stack[..., before : before + width, before : before + width]
    return stack


def _torch_mipmap(image, grid, padding_mode):
    n, c, h, w = image.shape
    levels = _torch_levels(grid, h, w)
    stack = _torch_stack(image, int(levels.max().ceil().item()) + 1)
    depth = stack.shape[2]
    warped = F.grid_sample(
        stack.reshape(n, c * depth, h, w), grid, padding_mode=padding_mode, align_corners=False
    ).reshape(n, c, depth, *grid.shape[1:3])
    index = levels[:, None, None].expand(n, c, 1, *levels.shape[1:])
    lower = torch.gather(warped, 2, index.floor().long())
    upper = torch.gather(warped, 2, index.ceil().long())
    return (lower + (index % 1.0) * (upper - lower))[:, :, 0]


def _assert_all_close(ours, theirs, label, atol):
    names = ("value", "grad image", "grad grid")
    for name, a, b in zip(names, ours, theirs, strict=True):
        assert_close(a, b, atol=atol, rtol=1e-5, name=f"{label} {name}")


# ---- grid_sample ----------------------------------------------------------------------------


def _ours_and_torch(ours_fn, torch_fn, image, grid, cotangent):
    """(value, d/d image, d/d grid) of ours (NHWC) and of the torch oracle (NCHW), both returned
    in NCHW / NHW2, for the loss sum(warp(image, grid) * cotangent)."""
    image_t = torch.tensor(image, requires_grad=True)
    grid_t = torch.tensor(grid, requires_grad=True)
    out_t = torch_fn(image_t, grid_t)
    (out_t * torch.tensor(cotangent)).sum().backward()

    def total(x, g):
        out = ours_fn(x, g)
        return jnp.sum(out * _nhwc(cotangent)), out

    (_, out), (grad_x, grad_g) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
        jnp.asarray(_nhwc(image)), jnp.asarray(grid)
    )
    ours = (_nchw(out), _nchw(grad_x), np.asarray(grad_g))
    theirs = (out_t.detach().numpy(), image_t.grad.numpy(), grid_t.grad.numpy())
    return ours, theirs


def _grid_sample_both(image, grid, cotangent, mode):
    return _ours_and_torch(
        lambda x, g: grid_sample(x, g, mode),
        lambda x, g: F.grid_sample(x, g, padding_mode=mode, align_corners=False),
        image,
        grid,
        cotangent,
    )


@pytest.mark.parametrize("mode", MODES)
def test_grid_sample_values_and_gradients_match_torch(mode):
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, 2, 13, 21)).astype(np.float32)
    grid = _zoom_out_grid(rng, 3, (9, 14), zoom=(0.7, 3.0), wobble=0.05)
    assert np.abs(grid).max() > 1.5  # samples well beyond the border
    cotangent = rng.standard_normal((3, 2, 9, 14)).astype(np.float32)
    ours, theirs = _grid_sample_both(image, grid, cotangent, mode)
    _assert_all_close(ours, theirs, mode, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_grid_sample_gradient_on_the_border_and_at_pixel_centres(mode):
    """Sampling exactly at pixel centres (the identity grid, whose edge rows sit exactly on the
    clamp bounds 0 and size - 1) and exactly on the border: the conventions torch defines."""
    rng = np.random.default_rng(1)
    h, w = 7, 10
    image = rng.standard_normal((1, 3, h, w)).astype(np.float32)
    grid = np.asarray(identity_grid(h, w))[None]
    edges = np.array([[-1.0, -1.0], [1.0, 1.0], [-1.0 + 1.0 / w, 0.3], [1.2, -1.0 + 1.0 / h]])
    grid = np.concatenate([grid.reshape(1, -1, 2), edges[None]], axis=1)[:, :, None]
    grid = grid.astype(np.float32)  # (1, h*w + 4, 1, 2)
    cotangent = rng.standard_normal((1, 3, grid.shape[1], 1)).astype(np.float32)
    ours, theirs = _grid_sample_both(image, grid, cotangent, mode)
    _assert_all_close(ours, theirs, mode, atol=1e-5)


# ---- mipmap warp ----------------------------------------------------------------------------


def _mipmap_both(image, grid, cotangent, mode):
    return _ours_and_torch(
        lambda x, g: mipmap_warp(x, g, mode, MAX_LEVELS).image,
        lambda x, g: _torch_mipmap(x, g, mode),
        image,
        grid,
        cotangent,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("source, out_hw", [((24, 24), (10, 14)), ((32, 32), (13, 16))])
def test_mipmap_warp_gradients_match_torch(mode, source, out_hw):
    """Perturbed zoom-out grids: levels between 0 and the clamp, no exact ties."""
    rng = np.random.default_rng(2)
    image = _smooth(rng, 3, 3, *source) + 0.1 * rng.standard_normal((3, 3, *source))
    image = image.astype(np.float32)
    grid = _zoom_out_grid(rng, 3, out_hw, zoom=(1.0, 5.0), wobble=0.01)
    levels = _torch_levels(torch.tensor(grid), *source)
    assert 0.5 < float(levels.max()) and float(levels.min()) < MAX_LEVELS - 1.0
    cotangent = rng.standard_normal((3, 3, *out_hw)).astype(np.float32)
    ours, theirs = _mipmap_both(image, grid, cotangent, mode)
    _assert_all_close(ours, theirs, mode, atol=5e-5)


def test_mipmap_levels_gradient_on_square_similarity_grids():
    """A similarity on a square grid makes all four neighbour distances equal in exact arithmetic,
    so the farthest neighbour is chosen by the last bit: our squared distances are rounded as
    torch rounds them, and a tie goes to the first neighbour, so the level gradients agree."""
    rng = np.random.default_rng(3)
    raw = np.stack(
        [
            rng.normal(0, 0.3, 4),
            rng.normal(0.8, 0.3, 4),
            rng.normal(0, 0.3, 4),
            rng.normal(0, 0.3, 4),
        ],
        1,
    ).astype(np.float32)
    grid = np.asarray(affine_grid(similarity_matrix(*jnp.asarray(raw).T), (16, 16)))
    cotangent = rng.standard_normal((4, 16, 16)).astype(np.float32)
    grid_t = torch.tensor(grid, requires_grad=True)
    (_torch_levels(grid_t, 64, 64) * torch.tensor(cotangent)).sum().backward()
    ours = jax.grad(lambda g: jnp.sum(mipmap_levels(g, 64, 64, MAX_LEVELS) * cotangent))(grid)
    assert_close(ours, grid_t.grad.numpy(), atol=1e-5, rtol=1e-5, name="grad grid")


@pytest.mark.parametrize("mode", MODES)
def test_mipmap_similarity_parameter_gradients_match_torch(mode):
    """Gradients of the raw similarity parameters (rotation, log-scale, shifts), as the STN's
    warp head receives them, through the mipmap warp of a 64x64 image to 16x16."""
    rng = np.random.default_rng(4)
    image = _smooth(rng, 2, 3, 64, 64)
    raw = np.stack(
        [
            rng.normal(0, 0.2, 2),
            rng.normal(0.6, 0.3, 2),
            rng.normal(0, 0.4, 2),
            rng.normal(0, 0.4, 2),
        ],
        1,
    ).astype(np.float32)
    cotangent = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)

    raw_t = torch.tensor(raw, requires_grad=True)
    angle, scale = torch.tanh(raw_t[:, 0]) * math.pi, torch.exp(raw_t[:, 1])
    top = torch.stack([scale * torch.cos(angle), -scale * torch.sin(angle), raw_t[:, 2]], 1)
    bottom = torch.stack([scale * torch.sin(angle), scale * torch.cos(angle), raw_t[:, 3]], 1)
    grid_t = F.affine_grid(torch.stack([top, bottom], 1), (2, 3, 16, 16), align_corners=False)
    out_t = _torch_mipmap(torch.tensor(image), grid_t, mode)
    (out_t * torch.tensor(cotangent)).sum().backward()

    def total(p):
        grid = affine_grid(similarity_matrix(p[:, 0], p[:, 1], p[:, 2], p[:, 3]), (16, 16))
        return jnp.sum(mipmap_warp(jnp.asarray(_nhwc(image)), grid, mode).image * _nhwc(cotangent))

    assert_close(jax.grad(total)(raw), raw_t.grad.numpy(), atol=1e-5, rtol=1e-5, name=mode)


def test_clamp_passes_the_gradient_at_its_bounds():
    x = jnp.array([-1.0, 0.0, 0.5, 2.5, 3.0])
    grad = jax.grad(lambda v: jnp.sum(clamp_inclusive(v, 0.0, 2.5)))(x)
    np.testing.assert_array_equal(np.asarray(grad), [0.0, 1.0, 1.0, 1.0, 0.0])
    x_t = torch.tensor(np.asarray(x), requires_grad=True)
    x_t.clamp(min=0.0, max=2.5).sum().backward()
    np.testing.assert_array_equal(np.asarray(grad), x_t.grad.numpy())
