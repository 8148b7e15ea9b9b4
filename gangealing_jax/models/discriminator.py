"""StyleGAN2 discriminator (residual architecture) in Flax, NHWC."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from gangealing_jax.models.layers import DEFAULT_BLUR, ConvLayer, EqualLinear, ResBlock
from gangealing_jax.models.stylegan2 import channel_table
from gangealing_jax.ops.precision import FLOAT32, Policy, widen


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    size: int = 256
    channels: tuple[int, ...] = ()  # one entry per resolution 4, 8, ..., size; () = reference table
    stddev_group: int = 4
    blur_kernel: tuple[int, ...] = DEFAULT_BLUR

    def __post_init__(self):
        table = channel_table(self.size, self.channels, 8, "discriminator")
        object.__setattr__(self, "channels", table)


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


class Discriminator(nn.Module):
    """Image (N, size, size, 3) -> logit (N, 1)."""

    config: DiscriminatorConfig
    policy: Policy = FLOAT32  # the minibatch stddev and the logit are float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        chans = cfg.channels  # chans[i] belongs to resolution 2**(i+2)
        taps, policy = cfg.blur_kernel, self.policy
        x = ConvLayer(chans[-1], 1, blur_taps=taps, policy=policy, name="convs_0")(x)
        for i, idx in enumerate(range(len(chans) - 2, -1, -1), start=1):
            x = ResBlock(chans[idx], True, taps, policy, name=f"convs_{i}")(x)
        x = minibatch_stddev(widen(x), cfg.stddev_group)
        x = ConvLayer(chans[0], 3, blur_taps=taps, policy=policy, name="final_conv")(x)
        # Flatten in channel-major order, as the reference's NCHW view does, so that converted
        # final_linear weights apply unchanged.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        x = EqualLinear(chans[0], activate=True, policy=policy, name="final_linear_0")(x)
        return widen(EqualLinear(1, policy=policy, name="final_linear_1")(x))
