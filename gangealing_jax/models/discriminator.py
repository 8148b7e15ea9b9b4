"""StyleGAN2 discriminator (residual architecture) in Flax, NHWC, with an optional feature decoder.

The decoder is the one of generator-guided discriminator regularisation (GGDR: Lee et al.,
"Generator Knows What Discriminator Should Learn in Unconditional GANs", ECCV 2022): from the
discriminator's own feature maps it predicts a feature map of the generator, U-Net style. Starting at 4x4, each stage
upsamples by 2 and applies a linear 1x1 conv; from 8x8 on its input is the previous stage's
output beside the discriminator's feature map of the same resolution.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from gangealing_jax.models.layers import DEFAULT_BLUR, ConvLayer, EqualConv2d, EqualLinear, ResBlock
from gangealing_jax.models.stylegan2 import channel_table
from gangealing_jax.ops.precision import FLOAT32, Policy, widen
from gangealing_jax.ops.upfirdn2d import upsample2d


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    size: int = 256
    channels: tuple[int, ...] = ()  # one entry per resolution 4, 8, ..., size; () = reference table
    stddev_group: int = 4
    blur_kernel: tuple[int, ...] = DEFAULT_BLUR
    # Feature decoder: the resolution of the map it predicts (8..size); 0 = no decoder (and no
    # decoder parameters), the plain StyleGAN2 discriminator.
    decoder_resolution: int = 0
    decoder_channels: int = 0  # channels of the predicted map (the generator's at that resolution)

    def __post_init__(self):
        table = channel_table(self.size, self.channels, 8, "discriminator")
        object.__setattr__(self, "channels", table)
        res = self.decoder_resolution
        if res and (res & (res - 1) or not 8 <= res <= self.size or self.decoder_channels < 1):
            raise ValueError(
                f"decoder_resolution must be 0 or a power of two in 8..{self.size} with "
                f"decoder_channels >= 1, got {res} and {self.decoder_channels}"
            )


def minibatch_stddev(x: jnp.ndarray, group_size: int) -> jnp.ndarray:
    """Append the minibatch standard-deviation feature map. x: (N, H, W, C) -> (N, H, W, C+1).

    As in the reference, sample n is grouped with samples n +- N/group (the batch is viewed as
    (group, N/group)), so N must be divisible by min(N, group_size).
    """
    n, h, w, c = x.shape
    group = min(n, group_size)
    if n % group:
        raise ValueError(f"batch {n} is not divisible by the stddev group size {group}")
    y = x.reshape(group, n // group, h, w, c)
    std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # (N/group, H, W, C)
    std = jnp.mean(std, axis=(1, 2, 3))  # (N/group,)
    std = jnp.tile(std, group)[:, None, None, None]  # sample n gets std[n % (N/group)]
    return jnp.concatenate([x, jnp.broadcast_to(std, (n, h, w, 1))], axis=-1)


class DiscriminatorOutput(NamedTuple):
    logit: jnp.ndarray  # (N, 1)
    # (N, R, R, decoder_channels) at R = config.decoder_resolution; None without a decoder
    decoded: jnp.ndarray | None


class FeatureDecoder(nn.Module):
    """Discriminator feature maps at 4, 8, ..., R/2 -> a predicted map (N, R, R, out_channels)."""

    channels: tuple[int, ...]  # output channels of the stages at 8, 16, ..., R
    blur_kernel: tuple[int, ...] = DEFAULT_BLUR
    policy: Policy = FLOAT32

    @nn.compact
    def __call__(self, skips):
        """skips: the discriminator's maps at 4, 8, ..., R/2 (one per stage)."""
        y = None
        for i, (skip, width) in enumerate(zip(skips, self.channels, strict=True)):
            y = skip if y is None else jnp.concatenate([y, skip], axis=-1)
            y = upsample2d(y, self.blur_kernel, policy=self.policy)  # (N, 2r, 2r, C)
            # Linear: the prediction is compared by direction (cosine), and the skips already
            # carry the discriminator's nonlinear features.
            y = EqualConv2d(width, 1, policy=self.policy, name=f"up_{i}")(y)
        return widen(y)


class Discriminator(nn.Module):
    """Image (N, size, size, 3) -> logit (N, 1); `forward` also returns the decoder's map."""

    config: DiscriminatorConfig
    policy: Policy = FLOAT32  # the minibatch stddev and the logit are float32

    def __call__(self, x):
        return self.forward(x).logit

    @nn.compact
    def forward(self, x) -> DiscriminatorOutput:
        cfg = self.config
        chans = cfg.channels  # chans[i] belongs to resolution 2**(i+2)
        taps, policy = cfg.blur_kernel, self.policy
        x = ConvLayer(chans[-1], 1, blur_taps=taps, policy=policy, name="convs_0")(x)
        maps = {x.shape[1]: x}
        for i, idx in enumerate(range(len(chans) - 2, -1, -1), start=1):
            x = ResBlock(chans[idx], True, taps, policy, name=f"convs_{i}")(x)
            maps[x.shape[1]] = x
        decoded = None
        if cfg.decoder_resolution:
            stages = range(2, cfg.decoder_resolution.bit_length() - 1)  # log2 of 4..R/2
            widths = [chans[s - 1] for s in stages[:-1]] + [cfg.decoder_channels]
            decoded = FeatureDecoder(tuple(widths), taps, policy, name="decoder")(
                [maps[2**s] for s in stages]
            )
        x = minibatch_stddev(widen(x), cfg.stddev_group)
        x = ConvLayer(chans[0], 3, blur_taps=taps, policy=policy, name="final_conv")(x)
        # Flatten in channel-major order, as the reference's NCHW view does, so that converted
        # final_linear weights apply unchanged.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        x = EqualLinear(chans[0], activate=True, policy=policy, name="final_linear_0")(x)
        logit = widen(EqualLinear(1, policy=policy, name="final_linear_1")(x))
        return DiscriminatorOutput(logit=logit, decoded=decoded)
