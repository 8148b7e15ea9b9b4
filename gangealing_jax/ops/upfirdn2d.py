"""FIR upsample / filter / downsample on NHWC images, and the StyleGAN2 blur helpers built on it.

Semantics follow StyleGAN2's `upfirdn2d`: zero-insertion upsampling (each sample followed by `up - 1`
zeros), zero padding (negative pads crop), a *true* convolution with the FIR kernel (the kernel is
flipped), then keeping every `down`-th sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gangealing_jax.ops.precision import FLOAT32, Policy

Pad = tuple[int, int]


def make_kernel(taps: Sequence[float]) -> np.ndarray:
    """Separable 2-D FIR kernel from 1-D taps (outer product), normalised to sum to 1."""
    k = np.asarray(taps, dtype=np.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(
    x: jnp.ndarray,
    kernel: jnp.ndarray | np.ndarray,
    up: int | tuple[int, int] = 1,
    down: int | tuple[int, int] = 1,
    pad: Pad | tuple[int, int, int, int] = (0, 0),
    *,
    policy: Policy = FLOAT32,
) -> jnp.ndarray:
    """x: (N, H, W, C); kernel: (kh, kw). `up`/`down` as int or (y, x).

    `pad` is (p0, p1) applied to both axes, or (pad_x0, pad_x1, pad_y0, pad_y1) per axis.
    A concrete (NumPy) kernel is applied as weighted shifted slices, separably when it is an outer
    product: on CPU this is an order of magnitude faster than a depthwise convolution, forward and
    backward, and it differentiates to any order. A traced kernel, and every kernel under a policy
    whose kernels are not the CPU's, takes the depthwise-conv path (one fused native op on GPU/TPU).
    The filter runs in x's dtype.
    """
    up_y, up_x = (up, up) if isinstance(up, int) else up
    down_y, down_x = (down, down) if isinstance(down, int) else down
    if len(pad) == 2:
        pad_x0, pad_x1, pad_y0, pad_y1 = pad[0], pad[1], pad[0], pad[1]
    else:
        pad_x0, pad_x1, pad_y0, pad_y1 = pad
    # Zero insertion (interior padding), trailing zeros of the last sample, then the pad/crop, in one
    # lax.pad: negative edge padding crops exactly as the reference's slice does.
    x = lax.pad(
        x,
        jnp.array(0, x.dtype),
        [
            (0, 0, 0),
            (pad_y0, pad_y1 + up_y - 1, up_y - 1),
            (pad_x0, pad_x1 + up_x - 1, up_x - 1),
            (0, 0, 0),
        ],
    )
    if isinstance(kernel, jax.core.Tracer) or not policy.cpu_kernels:
        return _depthwise_fir(x, kernel, down_y, down_x, policy.precision)
    # True convolution = cross-correlation with the flipped kernel.
    flipped = np.flip(np.asarray(kernel, np.float64), (0, 1))
    factors = _separable_factors(flipped)
    if factors is None:
        return _correlate_taps(x, flipped, down_y, down_x)
    column, row = factors
    x = _correlate_taps(x, column[:, None], down_y, 1)
    return _correlate_taps(x, row[None, :], 1, down_x)


def _separable_factors(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(column, row) with kernel == outer(column, row) up to float64 rounding, else None."""
    rows, cols = np.nonzero(kernel)
    if rows.size == 0:
        return None
    pivot_row, pivot_col = rows[0], cols[0]
    column = kernel[:, pivot_col] / kernel[pivot_row, pivot_col]
    row = kernel[pivot_row, :]
    if not np.allclose(np.outer(column, row), kernel, rtol=1e-12, atol=1e-15):
        return None
    return column, row


def _correlate_taps(x: jnp.ndarray, taps: np.ndarray, stride_y: int, stride_x: int) -> jnp.ndarray:
    """VALID cross-correlation of every channel with the constant 2-D `taps`, then striding."""
    kh, kw = taps.shape
    out_h = (x.shape[1] - kh) // stride_y + 1
    out_w = (x.shape[2] - kw) // stride_x + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            if taps[i, j] == 0:
                continue
            window = x[
                :,
                i : i + stride_y * (out_h - 1) + 1 : stride_y,
                j : j + stride_x * (out_w - 1) + 1 : stride_x,
            ]
            term = window * jnp.asarray(taps[i, j], x.dtype)
            out = term if out is None else out + term
    if out is None:
        return jnp.zeros((x.shape[0], out_h, out_w, x.shape[3]), x.dtype)
    return out


def _depthwise_fir(x: jnp.ndarray, kernel, stride_y: int, stride_x: int, precision) -> jnp.ndarray:
    channels = x.shape[-1]
    w = jnp.flip(jnp.asarray(kernel, x.dtype), (0, 1))[:, :, None, None]
    w = jnp.tile(w, (1, 1, 1, channels))  # (kh, kw, 1, C)
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=(stride_y, stride_x),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
        precision=precision,
    )


def upsample_pad(kernel_size: int, factor: int = 2) -> Pad:
    """Padding of StyleGAN2's `Upsample` (kernel scaled by factor**2)."""
    p = kernel_size - factor
    return ((p + 1) // 2 + factor - 1, p // 2)


def downsample_pad(kernel_size: int, factor: int = 2) -> Pad:
    """Padding of StyleGAN2's `Downsample`."""
    p = kernel_size - factor
    return ((p + 1) // 2, p // 2)


def blur_pad_after_transposed_conv(kernel_size: int, conv_size: int, factor: int = 2) -> Pad:
    """Blur padding after a stride-2 transposed conv (ModulatedConv2d upsample path)."""
    p = (kernel_size - factor) - (conv_size - 1)
    return ((p + 1) // 2 + factor - 1, p // 2 + 1)


def blur_pad_before_strided_conv(kernel_size: int, conv_size: int, factor: int = 2) -> Pad:
    """Blur padding before a stride-2 conv (downsampling ModulatedConv2d / ConvLayer)."""
    p = (kernel_size - factor) + (conv_size - 1)
    return ((p + 1) // 2, p // 2)


def upsample2d(x, taps: Sequence[float], factor: int = 2, *, policy: Policy = FLOAT32):
    kernel = make_kernel(taps) * factor**2
    pad = upsample_pad(kernel.shape[0], factor)
    return upfirdn2d(x, kernel, up=factor, pad=pad, policy=policy)


def downsample2d(x, taps: Sequence[float], factor: int = 2, *, policy: Policy = FLOAT32):
    kernel = make_kernel(taps)
    pad = downsample_pad(kernel.shape[0], factor)
    return upfirdn2d(x, kernel, down=factor, pad=pad, policy=policy)


def blur(x, taps: Sequence[float], pad: Pad, gain: float = 1.0, *, policy: Policy = FLOAT32):
    return upfirdn2d(x, make_kernel(taps) * gain, pad=pad, policy=policy)
