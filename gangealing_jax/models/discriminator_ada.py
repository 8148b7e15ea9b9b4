"""NVIDIA stylegan2-ada-pytorch discriminator in Flax, NHWC (layers: models/ada_layers.py).

    D = AdaDiscriminator(config)
    logits = D.apply(variables, images, c)   # images (N, R, R, img_channels) -> (N, 1)

The logits depend on the whole batch and its order (minibatch standard deviation).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gangealing_jax.models.ada_layers import (
    Conv2dLayer,
    ConvSpec,
    FCSpec,
    Filter,
    FullyConnected,
    downsample2d,
)
from gangealing_jax.models.stylegan2_ada import MappingNetwork, MappingSpec, spec_from_dict

_SQRT_HALF = 0.5**0.5


@dataclasses.dataclass(frozen=True)
class DiscriminatorBlockSpec:
    resolution: int
    in_channels: int  # 0 for the first block, which reads only the image
    architecture: str  # 'orig', 'skip' or 'resnet'
    resample_filter: Filter  # downsamples the image ('skip')
    conv0: ConvSpec
    conv1: ConvSpec
    fromrgb: ConvSpec | None = None
    skip: ConvSpec | None = None


@dataclasses.dataclass(frozen=True)
class EpilogueSpec:
    architecture: str
    cmap_dim: int
    conv: ConvSpec
    fc: FCSpec  # its weight is stored for the NHWC-flattened (N, H*W*C) input
    out: FCSpec
    mbstd_group_size: int = 0  # 0: the whole batch is one group
    mbstd_num_channels: int = 0  # 0: no minibatch-stddev layer
    fromrgb: ConvSpec | None = None


@dataclasses.dataclass(frozen=True)
class AdaDiscriminatorConfig:
    c_dim: int
    img_resolution: int
    img_channels: int
    blocks: tuple[DiscriminatorBlockSpec, ...]
    epilogue: EpilogueSpec
    mapping: MappingSpec | None = None  # conditional D: c -> cmap


def minibatch_stddev(x, group_size: int, num_channels: int):
    """NVIDIA's MinibatchStdLayer, NHWC. Sample i is grouped with i + k*N/G (strided groups)."""
    n, h, w, c = x.shape
    g = min(group_size, n) if group_size else n
    f = num_channels
    y = x.reshape(g, n // g, h, w, f, c // f)  # (G, M, H, W, F, c)
    y = y - jnp.mean(y, axis=0)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # (M, H, W, F, c)
    y = jnp.mean(y, axis=(1, 2, 4))  # (M, F)
    y = jnp.tile(y, (g, 1))  # (N, F): sample i takes row i % M
    y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, f))
    return jnp.concatenate([x, y], axis=-1)


class DiscriminatorBlock(nn.Module):
    spec: DiscriminatorBlockSpec

    @nn.compact
    def __call__(self, x, img):
        s = self.spec
        if s.fromrgb is not None:
            y = Conv2dLayer(s.fromrgb, name="fromrgb")(img)
            x = y if x is None else x + y
            img = downsample2d(img, s.resample_filter) if s.architecture == "skip" else None
        if s.architecture == "resnet":
            y = Conv2dLayer(s.skip, name="skip")(x, gain=_SQRT_HALF)
            x = Conv2dLayer(s.conv0, name="conv0")(x)
            x = Conv2dLayer(s.conv1, name="conv1")(x, gain=_SQRT_HALF)
            x = y + x
        else:
            x = Conv2dLayer(s.conv1, name="conv1")(Conv2dLayer(s.conv0, name="conv0")(x))
        return x, img


class DiscriminatorEpilogue(nn.Module):
    spec: EpilogueSpec

    @nn.compact
    def __call__(self, x, img, cmap):
        s = self.spec
        if s.fromrgb is not None:
            x = x + Conv2dLayer(s.fromrgb, name="fromrgb")(img)
        if s.mbstd_num_channels:
            x = minibatch_stddev(x, s.mbstd_group_size, s.mbstd_num_channels)
        x = Conv2dLayer(s.conv, name="conv")(x)
        x = FullyConnected(s.fc, name="fc")(x.reshape(x.shape[0], -1))
        x = FullyConnected(s.out, name="out")(x)
        if s.cmap_dim:
            x = jnp.sum(x * cmap, axis=1, keepdims=True) * (1 / s.cmap_dim**0.5)
        return x


class AdaDiscriminator(nn.Module):
    config: AdaDiscriminatorConfig

    @nn.compact
    def __call__(self, img, c=None):
        cfg = self.config
        img = img.astype(jnp.float32)
        x = None
        for block in cfg.blocks:
            x, img = DiscriminatorBlock(block, name=f"b{block.resolution}")(x, img)
        cmap = None
        if cfg.mapping is not None:
            if c is None:
                raise ValueError(f"this discriminator is conditional: pass c (N, {cfg.c_dim})")
            cmap = MappingNetwork(cfg.mapping, name="mapping")(None, c)
        return DiscriminatorEpilogue(cfg.epilogue, name="b4")(x, img, cmap)


def discriminator_init_shapes(config: AdaDiscriminatorConfig):
    d = AdaDiscriminator(config)
    r = config.img_resolution
    img = jnp.zeros((2, r, r, config.img_channels))
    c = jnp.zeros((2, config.c_dim)) if config.c_dim else None
    return jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), img, c))


def discriminator_config_from_dict(d: dict) -> AdaDiscriminatorConfig:
    nested = {"fromrgb": ConvSpec, "conv": ConvSpec, "fc": FCSpec, "out": FCSpec}
    nested.update({"epilogue": EpilogueSpec, "blocks": DiscriminatorBlockSpec})
    return spec_from_dict(AdaDiscriminatorConfig, d, nested)
