"""Layers of NVIDIA's stylegan2-ada-pytorch networks in Flax, NHWC, described by static specs.

Every size, gain, clamp and FIR filter is a field of a frozen spec read from the network pickle
(convert/stylegan2_ada.py), so nothing here assumes NVIDIA's defaults. Where ADA differs from the
rosinality layout of models/layers.py and models/stylegan2.py:

- Weight gains are applied at run time from the layer's own stored gain, and not always to the
  weight: FullyConnectedLayer scales W by lr_mul/sqrt(in) and b by lr_mul; Conv2dLayer scales W by
  1/sqrt(fan_in); ToRGBLayer scales its *styles*; SynthesisLayer uses no gain at all (demodulation
  removes it, but the 1e-8 inside the demodulation sees the unscaled weight, so a gain there would
  not be exact).
- Bias, activation gain and clamp sit in one `bias_act`: act(x + b) * act_gain * g, then
  clip(+-conv_clamp * g), where g is the extra gain of the call (sqrt(1/2) on resnet branches).
  The clamp applies whatever the dtype; rosinality has none.
- Every layer has its own FIR filter buffer (a 2-D array; NVIDIA stores 1-D ones only for
  separable filters of 8 taps or more, expanded to 2-D by the converter), applied as a true
  convolution (`flip_filter=False`), times up**2 when upsampling.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax.ops.conv import conv2d, conv_transpose2d_stride2
from gangealing_jax.ops.upfirdn2d import upfirdn2d

Filter = tuple[tuple[float, ...], ...]  # (fh, fw) FIR taps, as stored
_HIGHEST = jax.lax.Precision.HIGHEST  # parity with NVIDIA's float32 needs full-precision matmuls


@dataclasses.dataclass(frozen=True)
class FCSpec:
    """FullyConnectedLayer: y = act(x @ (W * weight_gain) + b * bias_gain) * act_gain."""

    in_features: int
    out_features: int
    weight_gain: float
    bias_gain: float = 1.0
    activation: str = "linear"
    act_gain: float = 1.0
    bias: bool = True


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """Conv2dLayer, SynthesisLayer or ToRGBLayer (`affine` set for the modulated two)."""

    in_channels: int
    out_channels: int
    kernel_size: int
    up: int = 1
    down: int = 1
    padding: int = 0
    weight_gain: float = 1.0  # ToRGBLayer: the gain of its styles
    act_gain: float = 1.0
    activation: str = "linear"
    conv_clamp: float | None = None
    bias: bool = True
    resample_filter: Filter = ()
    affine: FCSpec | None = None
    resolution: int = 0  # SynthesisLayer: the size of its noise
    use_noise: bool = False


_ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "lrelu": lambda x: jax.nn.leaky_relu(x, 0.2),
}


def check_activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported (known: {sorted(_ACTIVATIONS)})")
    return name


def bias_act(x, b, activation: str, gain: float, clamp: float | None):
    """NVIDIA's bias_act on the channel (last) axis: act(x + b) * gain, then clip to +-clamp."""
    if b is not None:
        x = x + b
    x = _ACTIVATIONS[activation](x)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = jnp.clip(x, -clamp, clamp)
    return x


def fir(x, taps: Filter, up: int = 1, down: int = 1, pad=(0, 0), gain: float = 1.0):
    """upfirdn2d with a stored filter (a concrete array, so the fast shifted-slice path runs)."""
    kernel = np.asarray(taps, np.float64) * gain
    return upfirdn2d(x, kernel, up=up, down=down, pad=pad)


def upsample2d(x, taps: Filter):
    fw = len(taps)
    return fir(x, taps, up=2, pad=((fw + 1) // 2, (fw - 2) // 2), gain=4.0)


def downsample2d(x, taps: Filter):
    fw = len(taps)
    return fir(x, taps, down=2, pad=((fw - 1) // 2, (fw - 2) // 2))


def conv2d_resample(x, weight, taps: Filter, up: int, down: int, padding: int):
    """NVIDIA's conv2d_resample for the cases its networks use. weight: (k, k, Cin, Cout).

    Padding arithmetic follows NVIDIA's: the filter's own padding is added to the layer's, and on
    the transposed path the transposed convolution's implicit padding is taken back off.
    """
    k = weight.shape[0]
    if up == 1 and down == 1:
        return conv2d(x, weight, padding=padding)
    fw = len(taps)
    if up == 1 and down == 2:
        pad = (padding + (fw - 1) // 2, padding + (fw - 2) // 2)
        if k == 1:  # filter and subsample first, then the pointwise conv
            return conv2d(fir(x, taps, down=2, pad=pad), weight)
        return conv2d(fir(x, taps, pad=pad), weight, stride=2)
    if up == 2 and down == 1:
        p0, p1 = padding + (fw + 1) // 2, padding + (fw - 2) // 2
        if k == 1:
            return conv2d(fir(x, taps, up=2, pad=(p0, p1), gain=4.0), weight)
        p0, p1 = p0 - (k - 1), p1 - (k - 2)
        crop = max(min(-p0, -p1), 0)  # torch's conv_transpose2d `padding`
        y = conv_transpose2d_stride2(x, weight)  # (N, 2H + k - 2, 2W + k - 2, Cout)
        if crop:
            y = y[:, crop:-crop, crop:-crop]
        return fir(y, taps, pad=(p0 + crop, p1 + crop), gain=4.0)
    raise ValueError(f"conv2d_resample with up={up}, down={down} is not supported")


class FullyConnected(nn.Module):
    spec: FCSpec

    @nn.compact
    def __call__(self, x):
        s = self.spec
        weight = self.param("weight", nn.initializers.normal(1.0), (s.in_features, s.out_features))
        x = jnp.dot(x, weight * s.weight_gain, precision=_HIGHEST)
        b = None
        if s.bias:
            b = self.param("bias", nn.initializers.zeros, (s.out_features,)) * s.bias_gain
        return bias_act(x, b, s.activation, s.act_gain, None)


class Conv2dLayer(nn.Module):
    """Plain (unmodulated) conv: the discriminator's layers and the resnet skips."""

    spec: ConvSpec

    @nn.compact
    def __call__(self, x, gain: float = 1.0):
        s = self.spec
        k = s.kernel_size
        weight = self.param(
            "weight", nn.initializers.normal(1.0), (k, k, s.in_channels, s.out_channels)
        )
        x = conv2d_resample(x, weight * s.weight_gain, s.resample_filter, s.up, s.down, s.padding)
        b = self.param("bias", nn.initializers.zeros, (s.out_channels,)) if s.bias else None
        clamp = None if s.conv_clamp is None else s.conv_clamp * gain
        return bias_act(x, b, s.activation, s.act_gain * gain, clamp)


def _modulated(x, weight, styles, spec: ConvSpec, demodulate: bool):
    """Modulated conv: styles scale the input channels and the demodulation the outputs, which
    equals NVIDIA's per-sample (fused) weights up to float rounding and keeps one shared weight."""
    x = x * styles[:, None, None, :]
    out = conv2d_resample(x, weight, spec.resample_filter, spec.up, 1, spec.padding)
    if demodulate:
        sq = jnp.einsum(
            "hwio,ni->no", jnp.square(weight), jnp.square(styles), precision=_HIGHEST
        )  # (N, Cout)
        out = out * jax.lax.rsqrt(sq + 1e-8)[:, None, None, :]
    return out


def noise_shape(spec: ConvSpec) -> tuple[int, int, int, int]:
    return (1, spec.resolution, spec.resolution, 1)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (x2 upsampling when `up`), noise, bias_act with conv_clamp."""

    spec: ConvSpec

    @nn.compact
    def __call__(self, x, w, noise_mode: str = "const", noise=None, gain: float = 1.0):
        s = self.spec
        k = s.kernel_size
        styles = FullyConnected(s.affine, name="affine")(w)  # (N, Cin)
        weight = self.param(
            "weight", nn.initializers.normal(1.0), (k, k, s.in_channels, s.out_channels)
        )
        x = _modulated(x, weight, styles, s, demodulate=True)
        if s.use_noise:
            strength = self.param("noise_strength", nn.initializers.zeros, ())
            const = self.variable(
                "buffers",
                "noise_const",
                lambda: jax.random.normal(self.make_rng("params"), noise_shape(s)),
            )
            if noise is None and noise_mode == "const":
                noise = const.value
            elif noise is None and noise_mode == "random":
                noise = jax.random.normal(
                    self.make_rng("noise"), (x.shape[0],) + x.shape[1:3] + (1,)
                )
            elif noise is None and noise_mode != "none":
                raise ValueError(
                    f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}"
                )
            if noise is not None:
                x = x + noise * strength  # after the conv, before bias and activation
        b = self.param("bias", nn.initializers.zeros, (s.out_channels,))
        clamp = None if s.conv_clamp is None else s.conv_clamp * gain
        return bias_act(x, b, s.activation, s.act_gain * gain, clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation; its gain scales the styles; bias; clamp."""

    spec: ConvSpec

    @nn.compact
    def __call__(self, x, w):
        s = self.spec
        k = s.kernel_size
        styles = FullyConnected(s.affine, name="affine")(w) * s.weight_gain
        weight = self.param(
            "weight", nn.initializers.normal(1.0), (k, k, s.in_channels, s.out_channels)
        )
        x = _modulated(x, weight, styles, s, demodulate=False)
        b = self.param("bias", nn.initializers.zeros, (s.out_channels,))
        return bias_act(x, b, "linear", 1.0, s.conv_clamp)
