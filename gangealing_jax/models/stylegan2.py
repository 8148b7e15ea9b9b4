"""StyleGAN2 generator (mapping + synthesis) in Flax, NHWC, layer for layer as the rosinality port.

Usage:
    G = Generator(GeneratorConfig(size=64, style_dim=256, n_mlp=8, channels=(...)))
    w = G.apply(variables, z, method=Generator.map)                     # (N, style_dim)
    img = G.apply(variables, broadcast_w(w, G.n_latent), noise_mode="const",
                  method=Generator.synthesize)                           # (N, size, size, 3)

Noise: `noise_mode="const"` uses the checkpoint's fixed buffers (collection `buffers`),
`"random"` draws fresh noise from the `noise` RNG stream (an explicit key is required).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gangealing_jax.models.layers import DEFAULT_BLUR, EqualLinear, FusedLeakyReLU
from gangealing_jax.ops.activations import pixel_norm
from gangealing_jax.ops.conv import modulated_conv2d
from gangealing_jax.ops.precision import FLOAT32, Policy
from gangealing_jax.ops.upfirdn2d import upsample2d

REFERENCE_CHANNELS = {
    4: 512,
    8: 512,
    16: 512,
    32: 512,
    64: 256,
    128: 128,
    256: 64,
    512: 32,
    1024: 16,
}


def reference_channels(size: int, channel_multiplier: int = 2) -> tuple[int, ...]:
    """The reference channel table for resolutions 4..size (64 and up scale by the multiplier)."""
    table = []
    for log_res in range(2, int(math.log2(size)) + 1):
        res = 2**log_res
        ch = REFERENCE_CHANNELS[res]
        table.append(ch * channel_multiplier if res >= 64 else ch)
    return tuple(table)


def channel_table(size: int, channels, min_size: int, what: str) -> tuple[int, ...]:
    """Validated channels per resolution 4..size (the reference table when `channels` is empty)."""
    log_size = int(round(math.log2(size)))
    if size < min_size or 2**log_size != size:
        raise ValueError(f"{what} size must be a power of two >= {min_size}, got {size}")
    channels = tuple(int(c) for c in channels) or reference_channels(size)
    if len(channels) != log_size - 1:
        raise ValueError(
            f"channels needs {log_size - 1} entries (resolutions 4..{size}), got {len(channels)}"
        )
    return channels


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    size: int = 256
    style_dim: int = 512
    n_mlp: int = 8
    channels: tuple[int, ...] = ()  # one entry per resolution 4, 8, ..., size; () = reference table
    lr_mlp: float = 0.01
    blur_kernel: tuple[int, ...] = DEFAULT_BLUR

    def __post_init__(self):
        object.__setattr__(
            self, "channels", channel_table(self.size, self.channels, 4, "generator")
        )

    @property
    def log_size(self) -> int:
        return int(round(math.log2(self.size)))

    @property
    def n_latent(self) -> int:
        return 2 * self.log_size - 2

    @property
    def num_layers(self) -> int:
        return 2 * (self.log_size - 2) + 1

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """Shapes (1, R, R, 1) of the per-layer noise inputs, in layer order."""
        return [(1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), 1) for i in range(self.num_layers)]


# --- latent-space helpers (pure) -------------------------------------------------------------


def broadcast_w(w: jnp.ndarray, n_latent: int) -> jnp.ndarray:
    """(N, D) -> (N, n_latent, D); W+ input (N, n_latent, D) is returned unchanged."""
    if w.ndim == 3:
        return w
    return jnp.broadcast_to(w[:, None, :], (w.shape[0], n_latent, w.shape[-1]))


def style_mix(w_first: jnp.ndarray, w_second: jnp.ndarray, inject_index: int, n_latent: int):
    """W+ with `w_first` in layers [0, inject_index) and `w_second` in [inject_index, n_latent)."""
    layer = jnp.arange(n_latent)[None, :, None]
    return jnp.where(layer < inject_index, w_first[:, None, :], w_second[:, None, :])


def truncate(w: jnp.ndarray, mean_w: jnp.ndarray, psi: float | jnp.ndarray) -> jnp.ndarray:
    """mean + psi * (w - mean): the truncation trick."""
    return mean_w + psi * (w - mean_w)


def truncated_w_plus(w, mean_w, psi, n_latent: int, inject_index: int | None = None):
    """W+ with truncated w in layers [0, inject_index) and untruncated w after.

    `inject_index=None` truncates every layer (plain truncation).
    """
    inject_index = n_latent if inject_index is None else inject_index
    return style_mix(truncate(w, mean_w, psi), w, inject_index, n_latent)


class SynthesisOutput(NamedTuple):
    """What the synthesis network makes of one W+ batch."""

    image: jnp.ndarray  # (N, size, size, 3)
    # One map per resolution 4, 8, ..., size: the output of that resolution's last styled conv
    # (before its toRGB), (N, R, R, channels[i]) for R = 2 ** (i + 2).
    features: tuple

    def feature_at(self, resolution: int) -> jnp.ndarray:
        """The feature map (N, R, R, C) of resolution R = `resolution`."""
        index = int(round(math.log2(resolution))) - 2
        if 2 ** (index + 2) != resolution or not 0 <= index < len(self.features):
            sizes = [2 ** (i + 2) for i in range(len(self.features))]
            raise ValueError(f"no generator feature map at resolution {resolution}; has {sizes}")
        return self.features[index]


# --- synthesis layers -----------------------------------------------------------------------


class ModulatedConv(nn.Module):
    features: int
    kernel_size: int
    demodulate: bool = True
    upsample: bool = False
    blur_kernel: Sequence[int] = DEFAULT_BLUR
    policy: Policy = FLOAT32

    @nn.compact
    def __call__(self, x, w):
        in_ch = x.shape[-1]
        k = self.kernel_size
        styles = EqualLinear(in_ch, bias_init=1.0, policy=self.policy, name="modulation")(w)
        weight = self.param(
            "weight", nn.initializers.normal(1.0), (k, k, in_ch, self.features)
        ) / math.sqrt(in_ch * k * k)
        return modulated_conv2d(
            x,
            weight,
            styles,
            demodulate=self.demodulate,
            upsample=self.upsample,
            blur_taps=self.blur_kernel,
            policy=self.policy,
        )


class StyledConv(nn.Module):
    features: int
    upsample: bool = False
    blur_kernel: Sequence[int] = DEFAULT_BLUR
    policy: Policy = FLOAT32

    @nn.compact
    def __call__(self, x, w, noise):
        x = ModulatedConv(
            self.features, 3, upsample=self.upsample, blur_kernel=self.blur_kernel,
            policy=self.policy, name="conv",
        )(x, w)  # fmt: skip
        strength = self.param("noise_strength", nn.initializers.zeros, (1,))
        x = x + strength * noise
        return FusedLeakyReLU(name="activate")(x)


class ToRGB(nn.Module):
    blur_kernel: Sequence[int] = DEFAULT_BLUR
    policy: Policy = FLOAT32

    @nn.compact
    def __call__(self, x, w, skip=None):
        out = ModulatedConv(3, 1, demodulate=False, policy=self.policy, name="conv")(x, w)
        out = out + self.param("bias", nn.initializers.zeros, (3,))
        if skip is not None:
            out = out + upsample2d(skip, self.blur_kernel, policy=self.policy)
        return out


class Generator(nn.Module):
    """StyleGAN2 generator. Parameter names mirror the reference modules (see convert/stylegan2).

    `policy` sets the synthesis network's numerics; the mapping network (z -> w, where PCA, the
    truncation centre and the congealing vector live) always runs in float32 at full precision.
    """

    config: GeneratorConfig
    policy: Policy = FLOAT32

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    def setup(self):
        cfg = self.config
        self.style_layers = [
            EqualLinear(cfg.style_dim, lr_mul=cfg.lr_mlp, activate=True, name=f"style_{i}")
            for i in range(cfg.n_mlp)
        ]
        self.const = self.param("const", nn.initializers.normal(1.0), (1, 4, 4, cfg.channels[0]))
        taps, policy = cfg.blur_kernel, self.policy
        self.conv1 = StyledConv(cfg.channels[0], blur_kernel=taps, policy=policy)
        self.to_rgb1 = ToRGB(taps, policy=policy)
        convs, to_rgbs = [], []
        for ch in cfg.channels[1:]:
            convs.append(StyledConv(ch, upsample=True, blur_kernel=taps, policy=policy))
            convs.append(StyledConv(ch, blur_kernel=taps, policy=policy))
            to_rgbs.append(ToRGB(taps, policy=policy))
        self.convs = convs
        self.to_rgbs = to_rgbs
        self.noise_buffers = [
            self.variable(
                "buffers",
                f"noise_{i}",
                lambda shape=shape: jax.random.normal(self.make_rng("params"), shape),
            )
            for i, shape in enumerate(cfg.noise_shapes())
        ]

    def map(self, z: jnp.ndarray) -> jnp.ndarray:
        """Mapping network: z (N, style_dim) -> w (N, style_dim)."""
        x = pixel_norm(z)
        for layer in self.style_layers:
            x = layer(x)
        return x

    def _noises(self, batch: int, noise_mode: str, noises):
        if noises is not None:
            return list(noises)
        if noise_mode == "const":
            return [buf.value for buf in self.noise_buffers]
        if noise_mode == "random":
            key = self.make_rng("noise")
            keys = jax.random.split(key, self.config.num_layers)
            return [
                jax.random.normal(k, (batch,) + shape[1:])
                for k, shape in zip(keys, self.config.noise_shapes(), strict=True)
            ]
        raise ValueError(f"noise_mode must be 'const' or 'random', got {noise_mode!r}")

    def synthesize(self, w_plus: jnp.ndarray, noise_mode: str = "random", noises=None):
        """W+ (N, n_latent, style_dim) -> image (N, size, size, 3), roughly in [-1, 1].

        `noises`, if given, is a list of num_layers arrays (N or 1, R, R, 1) overriding `noise_mode`.
        """
        return self.synthesize_features(w_plus, noise_mode, noises).image

    def synthesize_features(self, w_plus: jnp.ndarray, noise_mode: str = "random", noises=None):
        """`synthesize`, also returning the feature map of every resolution (SynthesisOutput).

        Under jit the maps nobody reads cost nothing: XLA drops them.
        """
        if w_plus.ndim != 3 or w_plus.shape[1] != self.config.n_latent:
            raise ValueError(
                f"synthesize expects W+ of shape (N, {self.config.n_latent}, style_dim), "
                f"got {w_plus.shape}; use broadcast_w(w, n_latent) for a single w"
            )
        noise = self._noises(w_plus.shape[0], noise_mode, noises)
        x = jnp.broadcast_to(self.const, (w_plus.shape[0],) + self.const.shape[1:])
        x = self.conv1(x, w_plus[:, 0], noise[0])
        features = [x]
        skip = self.to_rgb1(x, w_plus[:, 1])
        layer = 1
        for i, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * i](x, w_plus[:, layer], noise[2 * i + 1])
            x = self.convs[2 * i + 1](x, w_plus[:, layer + 1], noise[2 * i + 2])
            features.append(x)
            skip = to_rgb(x, w_plus[:, layer + 2], skip)
            layer += 2
        return SynthesisOutput(image=skip, features=tuple(features))

    def __call__(self, z: jnp.ndarray, noise_mode: str = "random", noises=None):
        """z (N, style_dim) -> image (N, size, size, 3)."""
        w = self.map(z)
        return self.synthesize(broadcast_w(w, self.config.n_latent), noise_mode, noises)


def mean_latent(generator: Generator, variables, key: jax.Array, num_samples: int = 4096):
    """Average w over `num_samples` mapped Gaussian z: the usual truncation centre, (1, style_dim)."""
    z = jax.random.normal(key, (num_samples, generator.config.style_dim))
    w = generator.apply(variables, z, method=Generator.map)
    return jnp.mean(w, axis=0, keepdims=True)
