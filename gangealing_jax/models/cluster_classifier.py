"""The cluster classifier of clustering GANgealing: which head (and whether to mirror) per image.

A clustering STN has K heads, each congealing its own mode of the data. At test time nothing says
which head an image belongs to, so a small ResNet is trained to predict it (see
`training.cluster_classifier`). With flips it predicts 2K classes: class j < K means "head j, image
as it is", class j >= K means "head j - K, mirrored image".

Usage:
    classifier = ClusterClassifier(classifier_config_for_stn(stn.config, flips=True))
    logits = classifier.apply(variables, images)  # (N, K * (1 + flips)); images (N, S, S, 3)
    choice = assign(logits, num_heads=K)          # choice.head (N,), choice.flip (N,)
    images = mirror_where(images, choice.flip)

The trunk is the similarity STN's (a 1x1 ConvLayer, ResBlocks down to 4x4, a 3x3 ConvLayer, with the
same submodule names), so the classifier can start from a trained STN's weights. The logits pass
through the fused leaky ReLU, as in the reference implementation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from gangealing_jax.models.layers import DEFAULT_BLUR, ConvLayer, EqualLinear, ResBlock
from gangealing_jax.models.stn import STNConfig, reference_stn_channels
from gangealing_jax.ops.mipmap import bilinear_downsample
from gangealing_jax.ops.precision import FLOAT32, Policy, widen


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    size: int = 128  # resolution the trunk sees (the STN's flow_size)
    supersize: int = 256  # resolution of real inputs, shrunk to `size` by the tent filter
    channels: tuple[tuple[int, int], ...] = ()  # (resolution, channels); () = reference table
    channel_multiplier: float = 0.5  # scales the reference table (used when channels == ())
    num_heads: int = 2  # clusters K of the STN
    flips: bool = False  # also predict whether the image should be mirrored (2K classes)
    blur_kernel: tuple[int, ...] = DEFAULT_BLUR

    def __post_init__(self):
        if self.size < 4 or 2 ** round(math.log2(self.size)) != self.size:
            raise ValueError(f"size must be a power of two >= 4, got {self.size}")
        if self.supersize < self.size or self.supersize % self.size:
            raise ValueError(
                f"supersize ({self.supersize}) must be a multiple of size ({self.size})"
            )
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}")
        pairs = self.channels or reference_stn_channels(self.channel_multiplier)
        pairs = tuple(sorted((int(res), int(ch)) for res, ch in pairs))
        object.__setattr__(self, "channels", pairs)
        object.__setattr__(self, "flips", bool(self.flips))
        object.__setattr__(self, "blur_kernel", tuple(self.blur_kernel))
        table = dict(pairs)
        missing = [2**i for i in range(2, int(math.log2(self.size)) + 1) if 2**i not in table]
        if missing:
            raise ValueError(f"the channel table has no entry for resolutions {missing}")

    @property
    def num_classes(self) -> int:
        return self.num_heads * (2 if self.flips else 1)

    @property
    def channel_table(self) -> dict[int, int]:
        return dict(self.channels)


def classifier_config_for_stn(stn_config: STNConfig, flips: bool) -> ClassifierConfig:
    """The classifier the reference builds next to an STN: same size, supersize and channels."""
    return ClassifierConfig(
        size=stn_config.flow_size,
        supersize=stn_config.supersize,
        channels=stn_config.channels,
        num_heads=stn_config.num_heads,
        flips=flips,
        blur_kernel=stn_config.blur_kernel,
    )


class ClusterClassifier(nn.Module):
    """NHWC images (N, S, S, C), S = size or a multiple of it -> logits (N, num_classes)."""

    config: ClassifierConfig
    policy: Policy = FLOAT32  # logits and everything after them are float32

    @nn.compact
    def __call__(self, images):
        cfg = self.config
        side = images.shape[2]
        if images.shape[1] != side or side % cfg.size:
            raise ValueError(
                f"classifier inputs must be square with a side that is a multiple of {cfg.size}, "
                f"got {images.shape[1:3]}"
            )
        x = images if side == cfg.size else bilinear_downsample(images, side // cfg.size)
        table, taps, policy = cfg.channel_table, cfg.blur_kernel, self.policy
        x = ConvLayer(table[cfg.size], 1, blur_taps=taps, policy=policy, name="convs_0")(x)
        for j, log_res in enumerate(range(int(math.log2(cfg.size)), 2, -1), start=1):
            x = ResBlock(table[2 ** (log_res - 1)], True, taps, policy, name=f"convs_{j}")(x)
        x = ConvLayer(table[4], 3, blur_taps=taps, policy=policy, name="final_conv")(x)
        features = x.reshape(x.shape[0], -1)  # (N, 4*4*C), flattened in (h, w, c) order
        logits = EqualLinear(cfg.num_classes, activate=True, policy=policy, name="to_logits")
        return widen(logits(features))


class Assignment(NamedTuple):
    head: jnp.ndarray  # int32 cluster index in [0, num_heads)
    flip: jnp.ndarray  # bool, mirror the image before warping it with `head`


def _check_columns(logits, num_heads: int) -> bool:
    """True when the logits hold flip columns (2K), False for K columns."""
    if logits.ndim != 2 or logits.shape[1] not in (num_heads, 2 * num_heads):
        raise ValueError(
            f"logits must be (N, {num_heads}) or (N, {2 * num_heads}) for num_heads={num_heads}, "
            f"got shape {logits.shape}"
        )
    return logits.shape[1] == 2 * num_heads


def assign(logits, num_heads: int, ignore_flips: bool = False) -> Assignment:
    """The best class of every image: head (N,) = class mod K, flip (N,) = class >= K.

    ignore_flips: report flip=False everywhere (the head is still the best class over all columns).
    With K columns (a classifier trained without flips) flip is always False.
    """
    has_flips = _check_columns(logits, num_heads)
    classes = jnp.argmax(logits, axis=1).astype(jnp.int32)
    flip = classes >= num_heads if has_flips and not ignore_flips else jnp.zeros_like(classes, bool)
    return Assignment(head=classes % num_heads, flip=flip)


def flip_decisions(logits, num_heads: int) -> Assignment:
    """Every head for every image, each with its own mirror decision: head (N, K) = k, flip (N, K)
    = logit of (k, mirrored) > logit of (k, as is); the first wins ties, as argmax does."""
    if not _check_columns(logits, num_heads):
        raise ValueError("flip decisions need a classifier trained with flips (2K logits)")
    pairs = logits.reshape(logits.shape[0], 2, num_heads)  # (N, as-is/mirrored, K)
    flip = jnp.argmax(pairs, axis=1) == 1
    head = jnp.broadcast_to(jnp.arange(num_heads, dtype=jnp.int32), flip.shape)
    return Assignment(head=head, flip=flip)


def mirror_where(images, flip):
    """images (N, H, W, C) with the rows where flip (N,) is set mirrored left-right."""
    return jnp.where(jnp.reshape(flip, (-1, 1, 1, 1)), jnp.flip(images, axis=2), images)
