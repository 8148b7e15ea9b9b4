"""FIR upsample / filter / downsample on NHWC images, and the StyleGAN2 blur helpers built on it.

Semantics follow StyleGAN2's `upfirdn2d`: zero-insertion upsampling (each sample followed by `up - 1`
zeros), zero padding (negative pads crop), a *true* convolution with the FIR kernel (the kernel is
flipped), then keeping every `down`-th sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

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
) -> jnp.ndarray:
    """x: (N, H, W, C); kernel: (kh, kw). `up`/`down` as int or (y, x).

    `pad` is (p0, p1) applied to both axes, or (pad_x0, pad_x1, pad_y0, pad_y1) per axis.
    """
    up_y, up_x = (up, up) if isinstance(up, int) else up
    down_y, down_x = (down, down) if isinstance(down, int) else down
    if len(pad) == 2:
        pad_x0, pad_x1, pad_y0, pad_y1 = pad[0], pad[1], pad[0], pad[1]
    else:
        pad_x0, pad_x1, pad_y0, pad_y1 = pad
    channels = x.shape[-1]
    kernel = jnp.asarray(kernel, dtype=x.dtype)
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
    # True convolution = cross-correlation with the flipped kernel; depthwise over channels.
    w = jnp.flip(kernel, (0, 1))[:, :, None, None]
    w = jnp.tile(w, (1, 1, 1, channels))  # (kh, kw, 1, C)
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=(down_y, down_x),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
        precision=lax.Precision.HIGHEST,
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


def upsample2d(x: jnp.ndarray, taps: Sequence[float], factor: int = 2) -> jnp.ndarray:
    kernel = make_kernel(taps) * factor**2
    return upfirdn2d(x, kernel, up=factor, pad=upsample_pad(kernel.shape[0], factor))


def downsample2d(x: jnp.ndarray, taps: Sequence[float], factor: int = 2) -> jnp.ndarray:
    kernel = make_kernel(taps)
    return upfirdn2d(x, kernel, down=factor, pad=downsample_pad(kernel.shape[0], factor))


def blur(x: jnp.ndarray, taps: Sequence[float], pad: Pad, gain: float = 1.0) -> jnp.ndarray:
    return upfirdn2d(x, make_kernel(taps) * gain, pad=pad)
