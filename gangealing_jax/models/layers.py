"""Equalized-learning-rate layers shared by the StyleGAN2 generator, discriminator and the STN.

Weights are stored unscaled (as the reference stores them) and scaled at run time, so converted
checkpoints are used as they are. Initialisers follow the reference: N(0, 1) / lr_mul weights.
Every layer's `policy` (ops/precision.py) sets the dtype, precision and kernels of its products;
parameters stay float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gangealing_jax.ops.activations import LRELU_GAIN, LRELU_SLOPE, fused_leaky_relu
from gangealing_jax.ops.conv import conv2d
from gangealing_jax.ops.precision import FLOAT32, Policy
from gangealing_jax.ops.upfirdn2d import blur, blur_pad_before_strided_conv

DEFAULT_BLUR = (1, 3, 3, 1)


def _normal_over(lr_mul: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) / lr_mul

    return init


class EqualLinear(nn.Module):
    """Dense layer with equalized lr. weight: (in, out); optional fused leaky ReLU."""

    features: int
    use_bias: bool = True
    bias_init: float = 0.0
    lr_mul: float = 1.0
    activate: bool = False
    policy: Policy = FLOAT32

    @nn.compact
    def __call__(self, x):
        in_dim = x.shape[-1]
        weight = self.param("weight", _normal_over(self.lr_mul), (in_dim, self.features))
        scale = self.lr_mul / math.sqrt(in_dim)
        p = self.policy
        out = jnp.dot(p.cast(x), p.cast(weight * scale), precision=p.precision)
        bias = None
        if self.use_bias:
            bias = (
                self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
                * self.lr_mul
            )
        if self.activate:
            return fused_leaky_relu(out, bias)
        return out if bias is None else out + bias


class EqualConv2d(nn.Module):
    """Conv with equalized lr. weight: (k, k, in, out)."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    policy: Policy = FLOAT32

    @nn.compact
    def __call__(self, x):
        in_ch = x.shape[-1]
        k = self.kernel_size
        weight = self.param("weight", _normal_over(1.0), (k, k, in_ch, self.features))
        weight = weight / math.sqrt(in_ch * k * k)
        out = conv2d(x, weight, stride=self.stride, padding=self.padding, policy=self.policy)
        if self.use_bias:
            out = out + self.param("bias", nn.initializers.zeros, (self.features,))
        return out


class FusedLeakyReLU(nn.Module):
    """Learned per-channel bias, then leaky ReLU(0.2) times sqrt(2)."""

    @nn.compact
    def __call__(self, x):
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        return fused_leaky_relu(x, bias)


class ConvLayer(nn.Module):
    """[blur ->] EqualConv2d [-> activation]; stride 2 when downsampling.

    As in the reference, a layer with both `use_bias` and `activate` keeps its bias in the activation
    (`act.bias`), and `activate` without bias is a plain scaled leaky ReLU.
    """

    features: int
    kernel_size: int
    downsample: bool = False
    use_bias: bool = True
    activate: bool = True
    blur_taps: Sequence[float] = DEFAULT_BLUR
    policy: Policy = FLOAT32

    @nn.compact
    def __call__(self, x):
        if self.downsample:
            pad = blur_pad_before_strided_conv(len(self.blur_taps), self.kernel_size)
            x = blur(x, self.blur_taps, pad, policy=self.policy)
            stride, padding = 2, 0
        else:
            stride, padding = 1, self.kernel_size // 2
        x = EqualConv2d(
            self.features,
            self.kernel_size,
            stride=stride,
            padding=padding,
            use_bias=self.use_bias and not self.activate,
            policy=self.policy,
            name="conv",
        )(x)
        if self.activate:
            if self.use_bias:
                x = FusedLeakyReLU(name="act")(x)
            else:
                x = jax.nn.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
        return x


class ResBlock(nn.Module):
    """Two 3x3 ConvLayers (the second downsampling) plus a 1x1 skip, summed and scaled by 1/sqrt(2)."""

    features: int
    downsample: bool = True
    blur_taps: Sequence[float] = DEFAULT_BLUR
    policy: Policy = FLOAT32

    @nn.compact
    def __call__(self, x):
        in_ch = x.shape[-1]
        taps, policy = self.blur_taps, self.policy
        out = ConvLayer(in_ch, 3, blur_taps=taps, policy=policy, name="conv1")(x)
        out = ConvLayer(
            self.features, 3, downsample=self.downsample, blur_taps=taps, policy=policy,
            name="conv2",
        )(out)  # fmt: skip
        skip = ConvLayer(
            self.features,
            1,
            downsample=self.downsample,
            activate=False,
            use_bias=False,
            blur_taps=taps,
            policy=policy,
            name="skip",
        )(x)
        return (out + skip) / math.sqrt(2.0)
