"""Convolutions of StyleGAN2 as pure functions on NHWC inputs and HWIO weights."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

from gangealing_jax.ops.upfirdn2d import (
    blur,
    blur_pad_after_transposed_conv,
    blur_pad_before_strided_conv,
)

_DIMS = ("NHWC", "HWIO", "NHWC")


def conv2d(x, weight, *, stride: int = 1, padding: int = 0, groups: int = 1):
    """Cross-correlation as torch's conv2d does it. x: (N, H, W, Cin); weight: (k, k, Cin/g, Cout)."""
    return lax.conv_general_dilated(
        x,
        weight,
        window_strides=(stride, stride),
        padding=[(padding, padding), (padding, padding)],
        dimension_numbers=_DIMS,
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )


def conv_transpose2d_stride2(x, weight):
    """torch conv_transpose2d(stride=2, padding=0). weight: (k, k, Cin, Cout) -> (N, 2H+k-2, ...)."""
    k = weight.shape[0]
    return lax.conv_general_dilated(
        x,
        jnp.flip(weight, (0, 1)),
        window_strides=(1, 1),
        padding=[(k - 1, k - 1), (k - 1, k - 1)],
        lhs_dilation=(2, 2),
        dimension_numbers=_DIMS,
        precision=lax.Precision.HIGHEST,
    )


def modulated_conv2d(
    x: jnp.ndarray,
    weight: jnp.ndarray,
    styles: jnp.ndarray,
    *,
    demodulate: bool = True,
    upsample: bool = False,
    downsample: bool = False,
    blur_taps: Sequence[float] = (1, 3, 3, 1),
) -> jnp.ndarray:
    """StyleGAN2 modulated convolution.

    x: (N, H, W, Cin); weight: (k, k, Cin, Cout) already scaled by 1/sqrt(fan_in); styles: (N, Cin).
    The modulation is applied to the activations and the demodulation to the outputs, which equals the
    per-sample weight form up to float rounding and keeps one shared weight (a plain, fast conv).
    """
    k = weight.shape[0]
    x = x * styles[:, None, None, :].astype(x.dtype)
    if upsample:
        out = conv_transpose2d_stride2(x, weight)
    elif downsample:
        x = blur(x, blur_taps, blur_pad_before_strided_conv(len(blur_taps), k))
        out = conv2d(x, weight, stride=2)
    else:
        out = conv2d(x, weight, padding=k // 2)
    if demodulate:
        # sum over (k, k, Cin) of (w * s)^2, per sample and output channel: (N, Cout)
        sq = jnp.einsum("hwio,ni->no", jnp.square(weight), jnp.square(styles))
        out = out * lax.rsqrt(sq + 1e-8)[:, None, None, :].astype(out.dtype)
    if upsample:
        pad = blur_pad_after_transposed_conv(len(blur_taps), k)
        out = blur(out, blur_taps, pad, gain=4.0)
    return out
