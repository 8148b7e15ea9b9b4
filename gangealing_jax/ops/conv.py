"""Convolutions of StyleGAN2 as pure functions on NHWC inputs and HWIO weights."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from gangealing_jax.ops.precision import FLOAT32, Policy
from gangealing_jax.ops.upfirdn2d import (
    blur,
    blur_pad_after_transposed_conv,
    blur_pad_before_strided_conv,
)

_DIMS = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, weight, stride: int, padding: int, precision, groups: int = 1):
    return lax.conv_general_dilated(
        x,
        weight,
        window_strides=(stride, stride),
        padding=[(padding, padding), (padding, padding)],
        dimension_numbers=_DIMS,
        feature_group_count=groups,
        precision=precision,
    )


def conv2d(x, weight, *, stride: int = 1, padding: int = 0, groups: int = 1, policy=FLOAT32):
    """Cross-correlation as torch's conv2d does it. x: (N, H, W, Cin); weight: (k, k, Cin/g, Cout).

    Computed in `policy`'s dtype and precision, with its kernels (see ops/precision.py).
    """
    x, weight = policy.cast(x), policy.cast(weight)
    if not policy.cpu_kernels or groups != 1 or stride not in (1, 2):
        return _lax_conv(x, weight, stride, padding, policy.precision, groups)
    return _conv2d(x, weight, stride, padding, policy.precision)


def conv_transpose2d_stride2(x, weight, *, policy: Policy = FLOAT32):
    """torch conv_transpose2d(stride=2, padding=0). weight: (k, k, Cin, Cout) -> (N, 2H+k-2, ...)."""
    x, weight = policy.cast(x), policy.cast(weight)
    if policy.cpu_kernels:
        return _conv_transpose2d_stride2(x, weight, policy.precision)
    k = weight.shape[0]
    # The textbook form: correlate the 2x zero-dilated input with the flipped kernel.
    return lax.conv_general_dilated(
        x,
        jnp.flip(weight, (0, 1)),
        window_strides=(1, 1),
        padding=[(k - 1, k - 1), (k - 1, k - 1)],
        lhs_dilation=(2, 2),
        dimension_numbers=_DIMS,
        precision=policy.precision,
    )


# The CPU kernels. Both convolutions carry their own gradients: on large inputs XLA's CPU
# backward-filter convolution is several times slower than matrix products over the shifted
# input, and the transposed convolution's lhs-dilated form multiplies mostly inserted zeros. The
# backward passes are written with differentiable ops, so second-order gradients (R1, path
# length) work.

# k x k convolutions (k > 1) whose padded inputs (N*H*W*Cin elements) are at most this size take
# XLA's own backward-filter convolution; larger ones, and every 1x1 convolution, one matrix
# product per tap. Measured with jax 0.10.2 on a 2-core CPU, ms per weight gradient (native / per
# tap): 3x3 at batch 16 over 18x18x64 5.2 / 5.7 and 10x10x128 2.4 / 2.8; batch 16 over 34x34x32
# 9.2 / 5.3, batch 8 over 34x34x128 71 / 27 and 66x66x128 293 / 103; 1x1 strided at batch 16 over
# 31x31x32 0.92 / 0.40. (One product over stacked im2col patches was slower than both.)
_NATIVE_WEIGHT_GRADIENT_MAX = 400_000


def _windows(x, k: int, stride: int, out_h: int, out_w: int) -> list:
    """The k*k strided windows (N, out_h, out_w, C) of x that the kernel taps see, row-major."""
    return [
        x[:, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride]
        for i in range(k)
        for j in range(k)
    ]


def _patches(x, k: int, stride: int, out_h: int, out_w: int):
    """(N, out_h, out_w, k*k, C): the k*k strided windows of x, row-major over the taps."""
    return jnp.stack(_windows(x, k, stride, out_h, out_w), axis=3)


def _contract_batch_and_space(a, b, precision):
    """sum over (N, H, W) of a (N, H, W, ...A) and b (N, H, W, ...B) -> (...A, ...B)."""
    return lax.dot_general(a, b, (((0, 1, 2), (0, 1, 2)), ((), ())), precision=precision)


def _conv_weight_gradient(padded, grad, k: int, stride: int, precision):
    """(k, k, Cin, Cout) gradient of an unpadded correlation of `padded` with respect to its weight."""
    cin, cout = padded.shape[3], grad.shape[3]
    if k > 1 and padded.size <= _NATIVE_WEIGHT_GRADIENT_MAX:
        # The transpose of the (linear) map weight -> output: XLA's backward-filter convolution.
        weight = jax.ShapeDtypeStruct((k, k, cin, cout), grad.dtype)
        transpose = jax.linear_transpose(
            lambda w: _lax_conv(padded, w, stride, 0, precision), weight
        )
        return transpose(grad)[0]
    out_h, out_w = grad.shape[1:3]
    rows = grad.reshape(-1, cout)
    taps = [
        lax.dot_general(
            window.reshape(-1, cin), rows, (((0,), (0,)), ((), ())), precision=precision
        )
        for window in _windows(padded, k, stride, out_h, out_w)
    ]
    return jnp.stack(taps).reshape(k, k, cin, cout)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x, weight, stride: int, padding: int, precision):
    return _lax_conv(x, weight, stride, padding, precision)


def _conv2d_fwd(x, weight, stride, padding, precision):
    return _conv2d(x, weight, stride, padding, precision), (x, weight)


def _conv2d_bwd(stride, padding, precision, residuals, grad):
    x, weight = residuals
    k, _, cin, cout = weight.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    grad_weight = _conv_weight_gradient(padded, grad, k, stride, precision)
    # The input gradient is the transposed convolution of grad, taken over the padded input.
    transposed = jnp.swapaxes(weight, 2, 3)
    if stride == 1:
        grad_padded = _conv2d(grad, jnp.flip(transposed, (0, 1)), 1, k - 1, precision)
    else:
        grad_padded = _conv_transpose2d_stride2(grad, transposed, precision)
    # Rows/columns the strided windows never reached get no gradient.
    extra_h = padded.shape[1] - grad_padded.shape[1]
    extra_w = padded.shape[2] - grad_padded.shape[2]
    grad_padded = jnp.pad(grad_padded, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)))
    grad_x = grad_padded[:, padding : padding + x.shape[1], padding : padding + x.shape[2]]
    return grad_x, grad_weight


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _phase_kernel(weight):
    """Regular-conv kernel computing the four output phases of a stride-2 transposed conv.

    Output pixel (2a + py, 2b + px) sums x[a - s, b - t] * weight[2s + py, 2t + px]; in a
    correlation window of `taps` = ceil(k/2) rows that is window row taps-1-s, so the phase kernel
    holds weight[2(taps-1-r) + py] at row r (zero where that tap does not exist).
    """
    k, _, cin, cout = weight.shape
    taps = (k + 1) // 2
    padded = jnp.pad(weight, ((0, 2 * taps - k), (0, 2 * taps - k), (0, 0), (0, 0)))
    # (2*taps) -> (taps, phase) with tap index 2*s + phase, then reverse s into window order.
    phases = padded.reshape(taps, 2, taps, 2, cin, cout)[::-1, :, ::-1]
    # -> (row, col, cin, py, px, cout) -> (taps, taps, cin, 4 * cout)
    return phases.transpose(0, 2, 4, 1, 3, 5).reshape(taps, taps, cin, 4 * cout)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_transpose2d_stride2(x, weight, precision):
    k, cout = weight.shape[0], weight.shape[3]
    n, h, w = x.shape[:3]
    taps = (k + 1) // 2
    out = _lax_conv(x, _phase_kernel(weight), 1, taps - 1, precision)  # (N, h+t-1, w+t-1, 4*co)
    rows, cols = out.shape[1:3]
    out = out.reshape(n, rows, cols, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
    out = out.reshape(n, 2 * rows, 2 * cols, cout)
    return out[:, : 2 * h + k - 2, : 2 * w + k - 2]


def _conv_transpose_fwd(x, weight, precision):
    return _conv_transpose2d_stride2(x, weight, precision), (x, weight)


def _conv_transpose_bwd(precision, residuals, grad):
    x, weight = residuals
    k = weight.shape[0]
    h, w = x.shape[1:3]
    grad_x = _conv2d(grad, jnp.swapaxes(weight, 2, 3), 2, 0, precision)
    # weight[i, j, c, o] sees grad at (2a + i, 2b + j) times x[a, b, c].
    windows = _patches(grad, k, 2, h, w)  # (N, h, w, k*k, Cout)
    grad_weight = _contract_batch_and_space(x, windows, precision)  # (Cin, k*k, Cout)
    grad_weight = grad_weight.reshape(x.shape[3], k, k, -1).transpose(1, 2, 0, 3)
    return grad_x, grad_weight


_conv_transpose2d_stride2.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def modulated_conv2d(
    x: jnp.ndarray,
    weight: jnp.ndarray,
    styles: jnp.ndarray,
    *,
    demodulate: bool = True,
    upsample: bool = False,
    downsample: bool = False,
    blur_taps: Sequence[float] = (1, 3, 3, 1),
    policy: Policy = FLOAT32,
) -> jnp.ndarray:
    """StyleGAN2 modulated convolution.

    x: (N, H, W, Cin); weight: (k, k, Cin, Cout) already scaled by 1/sqrt(fan_in); styles: (N, Cin).
    The modulation is applied to the activations and the demodulation to the outputs, which equals the
    per-sample weight form up to float rounding and keeps one shared weight (a plain, fast conv).
    The convolution follows `policy`; the demodulation factors are computed in float32.
    """
    k = weight.shape[0]
    x = x * styles[:, None, None, :].astype(x.dtype)
    if upsample:
        out = conv_transpose2d_stride2(x, weight, policy=policy)
    elif downsample:
        x = blur(x, blur_taps, blur_pad_before_strided_conv(len(blur_taps), k), policy=policy)
        out = conv2d(x, weight, stride=2, policy=policy)
    else:
        out = conv2d(x, weight, padding=k // 2, policy=policy)
    if demodulate:
        # sum over (k, k, Cin) of (w * s)^2, per sample and output channel: (N, Cout)
        sq = jnp.einsum("hwio,ni->no", jnp.square(weight), jnp.square(styles))
        out = out * lax.rsqrt(sq + 1e-8)[:, None, None, :].astype(out.dtype)
    if upsample:
        pad = blur_pad_after_transposed_conv(len(blur_taps), k)
        out = blur(out, blur_taps, pad, gain=4.0, policy=policy)
    return out
