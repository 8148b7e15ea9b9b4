"""The fast convolution and FIR paths against plain lax convolutions: values, gradients and
second-order gradients (what R1 and the path-length penalty differentiate)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from gangealing_jax.ops import conv, upfirdn2d
from tests.golden import assert_close

_DIMS = ("NHWC", "HWIO", "NHWC")


def _lax_conv2d(x, w, stride, padding):
    pads = [(padding, padding)] * 2
    return lax.conv_general_dilated(
        x, w, (stride, stride), pads, dimension_numbers=_DIMS, precision=lax.Precision.HIGHEST
    )


def _lax_conv_transpose(x, w):
    k = w.shape[0]
    return lax.conv_general_dilated(
        x,
        jnp.flip(w, (0, 1)),
        (1, 1),
        [(k - 1, k - 1)] * 2,
        lhs_dilation=(2, 2),
        dimension_numbers=_DIMS,
        precision=lax.Precision.HIGHEST,
    )


def _grads(fn, x, w):
    return jax.grad(lambda x, w: jnp.sum(fn(x, w) ** 3), argnums=(0, 1))(x, w)


def _second_order(fn, x, w):
    """d/dw of |d/dx sum(f^3)|^2, the shape of an R1 penalty's parameter gradient."""
    return jax.grad(lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(fn(x, w) ** 3))(x) ** 2))(w)


def _compare(fast, slow, x, w):
    assert_close(fast(x, w), slow(x, w), rtol=1e-5)
    for got, want in zip(_grads(fast, x, w), _grads(slow, x, w), strict=True):
        assert_close(got, want, rtol=1e-5)
    assert_close(_second_order(fast, x, w), _second_order(slow, x, w), rtol=1e-5)


@pytest.mark.parametrize(
    "stride,padding,k,size",
    # 1x1 convolutions take the per-tap weight gradient at any size, larger kernels only above
    # the native one's limit.
    [
        (1, 1, 3, 6),
        (2, 0, 3, 9),
        (2, 0, 3, 8),
        (2, 1, 3, 7),
        (1, 2, 5, 6),
        (1, 0, 1, 5),
        (2, 0, 1, 7),
    ],
)
def test_conv2d_matches_lax(stride, padding, k, size):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size + 1, 3))
    w = jax.random.normal(jax.random.PRNGKey(1), (k, k, 3, 4))
    _compare(
        lambda x, w: conv.conv2d(x, w, stride=stride, padding=padding),
        lambda x, w: _lax_conv2d(x, w, stride, padding),
        x,
        w,
    )


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), (2, 1)])
def test_conv2d_per_tap_weight_gradient_matches_lax(stride, padding, monkeypatch):
    # Large inputs take one matrix product per tap instead of XLA's backward-filter convolution.
    monkeypatch.setattr(conv, "_NATIVE_WEIGHT_GRADIENT_MAX", 0)
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 7, 8, 3))
    w = jax.random.normal(jax.random.PRNGKey(5), (3, 3, 3, 4))
    _compare(
        lambda x, w: conv.conv2d(x, w, stride=stride, padding=padding),
        lambda x, w: _lax_conv2d(x, w, stride, padding),
        x,
        w,
    )


@pytest.mark.parametrize("k,size", [(3, 5), (1, 4), (4, 3)])
def test_conv_transpose_matches_lax(k, size):
    x = jax.random.normal(jax.random.PRNGKey(2), (2, size, size + 1, 3))
    w = jax.random.normal(jax.random.PRNGKey(3), (k, k, 3, 4))
    assert conv.conv_transpose2d_stride2(x, w).shape == (2, 2 * size + k - 2, 2 * size + k, 4)
    _compare(conv.conv_transpose2d_stride2, _lax_conv_transpose, x, w)


@pytest.mark.parametrize(
    "kernel,options",
    [
        (upfirdn2d.make_kernel((1, 3, 3, 1)) * 4, dict(up=2, pad=(2, 1))),
        (upfirdn2d.make_kernel((1, 3, 3, 1)), dict(down=2, pad=(1, 1))),
        (np.arange(12.0).reshape(3, 4), dict(up=(2, 1), down=(1, 2), pad=(1, 2, 0, 1))),
        (np.array([[0.0, 1.0], [2.0, 0.0]]), dict(pad=(-1, 2))),
    ],
    ids=["upsample", "downsample", "non_separable_mixed", "crop"],
)
def test_fir_taps_match_depthwise_conv(kernel, options):
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 9, 8, 3))
    fast = upfirdn2d.upfirdn2d(x, kernel, **options)
    # A traced kernel takes the depthwise-convolution path.
    slow = jax.jit(lambda x, k: upfirdn2d.upfirdn2d(x, k, **options))(x, jnp.asarray(kernel))
    assert_close(fast, slow, rtol=1e-5)
    grad = jax.grad(lambda x: jnp.sum(upfirdn2d.upfirdn2d(x, kernel, **options) ** 3))(x)
    grad_slow = jax.grad(
        lambda x: jnp.sum(upfirdn2d.upfirdn2d(x, jnp.asarray(kernel), **options) ** 3)
    )
    assert_close(grad, jax.jit(grad_slow)(x), rtol=1e-5)
