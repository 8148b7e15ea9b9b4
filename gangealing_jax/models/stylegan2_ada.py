"""NVIDIA stylegan2-ada-pytorch generator in Flax, NHWC (layers and ADA's differences: ada_layers).

Usage (convert/stylegan2_ada.py builds config and variables from a network pickle):
    G = AdaGenerator(config)
    ws = G.apply(variables, z, c, truncation_psi=0.7, method=AdaGenerator.map_ws)  # (N, num_ws, w_dim)
    img = G.apply(variables, ws, noise_mode="const", method=AdaGenerator.synthesize)  # NHWC

`map` / `synthesize` / `noise_shapes()` / `n_latent` / `style_dim` mirror models/stylegan2.Generator,
so the rest of the package can drive either. Noise: "const" (the stored noise_const buffers),
"none", or "random" (the `noise` RNG stream).

Beyond the layers (ada_layers), ADA differs from rosinality's generator in the mapping (z_dim may
differ from w_dim, an optional label embedding is normalised and concatenated, the tracked w_avg is
the truncation centre), in the synthesis ('resnet' and 'orig' architectures besides 'skip'; a
block's ToRGB shares a w row with the next block's first conv) and in its noise (one stored
(R, R) buffer per layer). NVIDIA runs blocks at or above `fp16_resolution` in float16 on GPUs;
here every block runs in float32, which is NVIDIA's `force_fp32=True`: the fp16-only input
normalisation of its modulated conv is skipped, and conv_clamp applies all the same.
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
    SynthesisLayer,
    ToRGBLayer,
    noise_shape,
    upsample2d,
)
from gangealing_jax.ops.activations import pixel_norm

_SQRT_HALF = 0.5**0.5


@dataclasses.dataclass(frozen=True)
class MappingSpec:
    z_dim: int
    c_dim: int
    w_dim: int
    layers: tuple[FCSpec, ...]
    embed: FCSpec | None = None  # the label embedding, when c_dim > 0
    num_ws: int = 0  # 0: return (N, w_dim) unbroadcast (the discriminator's mapping)


@dataclasses.dataclass(frozen=True)
class SynthesisBlockSpec:
    resolution: int
    in_channels: int  # 0 for the first block, which starts from `const`
    out_channels: int
    architecture: str  # 'orig', 'skip' or 'resnet'
    is_last: bool
    num_conv: int
    num_torgb: int
    resample_filter: Filter  # the block's own filter: upsamples the skip image
    conv1: ConvSpec
    conv0: ConvSpec | None = None
    torgb: ConvSpec | None = None
    skip: ConvSpec | None = None

    def noise_layers(self) -> tuple[ConvSpec, ...]:
        return tuple(s for s in (self.conv0, self.conv1) if s is not None and s.use_noise)


@dataclasses.dataclass(frozen=True)
class AdaGeneratorConfig:
    z_dim: int
    c_dim: int
    w_dim: int
    num_ws: int
    img_resolution: int
    img_channels: int
    mapping: MappingSpec
    blocks: tuple[SynthesisBlockSpec, ...]

    # The names models/stylegan2.GeneratorConfig uses, for code that drives either generator.
    @property
    def style_dim(self) -> int:
        return self.w_dim

    @property
    def n_latent(self) -> int:
        return self.num_ws

    @property
    def size(self) -> int:
        return self.img_resolution

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """Shapes (1, R, R, 1) of every noise input, in layer order."""
        return [noise_shape(s) for b in self.blocks for s in b.noise_layers()]


class MappingNetwork(nn.Module):
    """z (N, z_dim) [and c (N, c_dim)] -> w (N, w_dim)."""

    spec: MappingSpec

    @nn.compact
    def __call__(self, z, c=None):
        s = self.spec
        x = pixel_norm(z.astype(jnp.float32), axis=1) if s.z_dim else None  # 2nd-moment norm
        if s.c_dim:
            if c is None:
                raise ValueError(f"this network is conditional: pass c of shape (N, {s.c_dim})")
            y = pixel_norm(FullyConnected(s.embed, name="embed")(c.astype(jnp.float32)), axis=1)
            x = y if x is None else jnp.concatenate([x, y], axis=1)
        for i, layer in enumerate(s.layers):
            x = FullyConnected(layer, name=f"fc{i}")(x)
        return x


class SynthesisBlock(nn.Module):
    spec: SynthesisBlockSpec

    @nn.compact
    def __call__(self, x, img, ws, noise_mode: str, noises):
        """ws: (N, num_conv + num_torgb, w_dim); noises: one array or None per noise layer."""
        s = self.spec
        noises = list(noises)

        def take_noise(layer):
            return noises.pop(0) if layer.use_noise else None

        n = ws.shape[0]
        if s.in_channels == 0:
            const = self.param(
                "const",
                nn.initializers.normal(1.0),
                (1, s.resolution, s.resolution, s.out_channels),
            )
            x = jnp.broadcast_to(const, (n,) + const.shape[1:])
            x = SynthesisLayer(s.conv1, name="conv1")(x, ws[:, 0], noise_mode, take_noise(s.conv1))
        elif s.architecture == "resnet":
            y = Conv2dLayer(s.skip, name="skip")(x, gain=_SQRT_HALF)
            x = SynthesisLayer(s.conv0, name="conv0")(x, ws[:, 0], noise_mode, take_noise(s.conv0))
            x = SynthesisLayer(s.conv1, name="conv1")(
                x, ws[:, 1], noise_mode, take_noise(s.conv1), gain=_SQRT_HALF
            )
            x = y + x
        else:
            x = SynthesisLayer(s.conv0, name="conv0")(x, ws[:, 0], noise_mode, take_noise(s.conv0))
            x = SynthesisLayer(s.conv1, name="conv1")(x, ws[:, 1], noise_mode, take_noise(s.conv1))
        if img is not None:
            img = upsample2d(img, s.resample_filter)
        if s.torgb is not None:
            y = ToRGBLayer(s.torgb, name="torgb")(x, ws[:, s.num_conv])
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    config: AdaGeneratorConfig

    @nn.compact
    def __call__(self, ws, noise_mode: str = "const", noises=None):
        x = img = None
        start, offset = 0, 0
        for block in self.config.blocks:
            count = len(block.noise_layers())
            block_noises = (
                [None] * count if noises is None else list(noises[offset : offset + count])
            )
            # A block reads num_conv + num_torgb rows but advances by num_conv only: its ToRGB
            # shares the w row of the next block's first conv.
            block_ws = ws[:, start : start + block.num_conv + block.num_torgb]
            x, img = SynthesisBlock(block, name=f"b{block.resolution}")(
                x, img, block_ws, noise_mode, block_noises
            )
            start += block.num_conv
            offset += count
        return img


def broadcast_ws(w, num_ws: int):
    """(N, D) -> (N, num_ws, D); (N, num_ws, D) is returned unchanged."""
    if w.ndim == 3:
        return w
    return jnp.broadcast_to(w[:, None, :], (w.shape[0], num_ws, w.shape[-1]))


def truncate_ws(ws, w_avg, psi, cutoff: int | None = None):
    """w_avg + psi (ws - w_avg) on rows [:cutoff] (every row when cutoff is None)."""
    truncated = w_avg + psi * (ws - w_avg)
    if cutoff is None:
        return truncated
    rows = jnp.arange(ws.shape[1])[None, :, None]
    return jnp.where(rows < cutoff, truncated, ws)


class AdaGenerator(nn.Module):
    """Mapping + synthesis of an NVIDIA StyleGAN2-ADA generator."""

    config: AdaGeneratorConfig

    @property
    def n_latent(self) -> int:
        return self.config.num_ws

    def setup(self):
        cfg = self.config
        self.mapping = MappingNetwork(cfg.mapping)
        self.synthesis = SynthesisNetwork(cfg)
        # mapping.w_avg of the pickle: the tracked mean w, the centre of truncation.
        self.w_avg = self.variable("buffers", "w_avg", lambda: jnp.zeros((cfg.w_dim,)))

    def map(self, z, c=None):
        """z (N, z_dim) [, c (N, c_dim)] -> w (N, w_dim), untruncated."""
        return self.mapping(z, c)

    def mean_w(self):
        """The tracked mean w, (1, w_dim)."""
        return self.w_avg.value[None, :]

    def map_ws(self, z, c=None, truncation_psi=1.0, truncation_cutoff: int | None = None):
        """NVIDIA's `G.mapping`: (N, num_ws, w_dim), truncated towards w_avg."""
        ws = broadcast_ws(self.mapping(z, c), self.config.num_ws)
        if isinstance(truncation_psi, (int, float)) and truncation_psi == 1:
            return ws
        return truncate_ws(ws, self.w_avg.value, truncation_psi, truncation_cutoff)

    def synthesize(self, w_plus, noise_mode: str = "random", noises=None):
        """W+ (N, num_ws, w_dim) -> image (N, R, R, img_channels). `noises`, if given, is a list
        of arrays (N or 1, R, R, 1), one per noise layer (`config.noise_shapes()`)."""
        if w_plus.ndim != 3 or w_plus.shape[1] != self.config.num_ws:
            raise ValueError(
                f"synthesize expects ws of shape (N, {self.config.num_ws}, w_dim), got "
                f"{w_plus.shape}; use broadcast_ws(w, num_ws) for a single w"
            )
        return self.synthesis(w_plus.astype(jnp.float32), noise_mode, noises)

    def __call__(self, z, c=None, noise_mode: str = "random", truncation_psi=1.0):
        return self.synthesize(self.map_ws(z, c, truncation_psi), noise_mode)


def init_shapes(config: AdaGeneratorConfig):
    """The variables' shape tree, without computing anything."""
    gen = AdaGenerator(config)
    z = jnp.zeros((1, config.z_dim))
    c = jnp.zeros((1, config.c_dim)) if config.c_dim else None
    return jax.eval_shape(lambda: gen.init(jax.random.PRNGKey(0), z, c, noise_mode="const"))


_NESTED = {
    "layers": FCSpec,
    "embed": FCSpec,
    "affine": FCSpec,
    "conv0": ConvSpec,
    "conv1": ConvSpec,
    "torgb": ConvSpec,
    "skip": ConvSpec,
    "mapping": MappingSpec,
    "blocks": SynthesisBlockSpec,
}


def spec_from_dict(cls, d: dict, nested=None):
    """A spec dataclass from its `dataclasses.asdict` (JSON) form: lists become tuples."""
    nested = {**_NESTED, **(nested or {})}

    def value(name, v):
        sub = nested.get(name)
        if sub is not None and isinstance(v, dict):
            return spec_from_dict(sub, v, nested)
        if sub is not None and isinstance(v, list):
            return tuple(spec_from_dict(sub, x, nested) for x in v)
        if isinstance(v, list):
            return tuple(value("", x) for x in v)
        return v

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: value(k, v) for k, v in d.items() if k in names})


def make_generator(config, policy=None):
    """The generator module for a config: AdaGenerator or models/stylegan2.Generator.

    policy: the numerics policy of models/stylegan2.Generator (None: its default); NVIDIA's
    generator runs float32 at full precision.
    """
    if isinstance(config, AdaGeneratorConfig):
        return AdaGenerator(config)
    from gangealing_jax.models.stylegan2 import Generator

    return Generator(config) if policy is None else Generator(config, policy=policy)
