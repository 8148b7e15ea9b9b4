"""The GANgealing spatial transformer: similarity and/or flow stages applied in sequence.

Usage:
    stn = STN(STNConfig(transforms=("similarity", "flow"), flow_size=128, supersize=256))
    variables = stn.init(key, images)                       # images (N, 256, 256, 3)
    out = stn.apply(variables, images, padding_mode="reflection")
    out.image  # (N, 128, 128, 3) congealed images; also out.grid, out.flow, out.matrix, ...

Each stage regresses its warp from a `flow_size` image (larger inputs are first shrunk with the
reference's tent-filter BilinearDownsample) and samples pixels from the full-resolution source. A
similarity stage hands its matrix to the next stage, which composes it with its own warp.

Static arguments (Python values; changing them retraces): sizes, `iters`, `output_resolution`,
`padding_mode`, whether `heads`/`alpha` are given. Traced: images, `alpha`, `heads`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from gangealing_jax.models.layers import DEFAULT_BLUR, ConvLayer, EqualLinear, ResBlock
from gangealing_jax.models.stn_heads import FlowHead, HeadOutput, SimilarityHead
from gangealing_jax.ops.mipmap import DEFAULT_MAX_LEVELS, bilinear_downsample
from gangealing_jax.ops.precision import FLOAT32, Policy
from gangealing_jax.ops.sampling import PADDING_MODES, disk_vignette

TRANSFORMS = ("similarity", "flow")
INPUT_MASKS = ("none", "disk")

# The reference STN channel table; resolutions of 64 and up are scaled by channel_multiplier.
REFERENCE_STN_CHANNELS = {
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


def reference_stn_channels(channel_multiplier: float = 0.5) -> tuple[tuple[int, int], ...]:
    """(resolution, channels) pairs of the reference table, truncated to int as it does."""
    return tuple(
        (res, int(ch * channel_multiplier) if res >= 64 else ch)
        for res, ch in sorted(REFERENCE_STN_CHANNELS.items())
    )


def _channel_pairs(channels) -> tuple[tuple[int, int], ...]:
    items = channels.items() if isinstance(channels, Mapping) else channels
    return tuple(sorted((int(res), int(ch)) for res, ch in items))


@dataclasses.dataclass(frozen=True)
class STNConfig:
    transforms: tuple[str, ...] = ("similarity", "flow")  # stages, applied in order
    flow_size: int = 128  # regression resolution, and the default output resolution
    supersize: int = 256  # resolution of the source images pixels are sampled from
    channels: tuple[tuple[int, int], ...] = ()  # (resolution, channels); () = reference table
    channel_multiplier: float = 0.5  # scales the reference table (used when channels == ())
    num_heads: int = 1  # clusters; every head has its own warp
    flow_downsample: int = 8  # the flow is regressed at flow_size / flow_downsample
    blur_kernel: tuple[int, ...] = DEFAULT_BLUR
    antialias: bool = True  # mipmap sampling (the reference always uses it)
    max_mipmap_levels: float = DEFAULT_MAX_LEVELS
    # "disk": the trunks see their input faded to grey outside the inscribed disk (not in the
    # reference), so that padded corners of rotated training images cannot tell the angle.
    input_mask: str = "none"

    def __post_init__(self):
        transforms = (self.transforms,) if isinstance(self.transforms, str) else self.transforms
        object.__setattr__(self, "transforms", tuple(transforms))
        if not self.transforms or any(t not in TRANSFORMS for t in self.transforms):
            raise ValueError(f"transforms must be a sequence of {TRANSFORMS}, got {transforms}")
        if "flow" in self.transforms[:-1]:
            raise ValueError("a flow stage can only be the last stage")
        for name in ("flow_size", "flow_downsample"):
            value = getattr(self, name)
            if value < 1 or 2 ** round(math.log2(value)) != value:
                raise ValueError(f"{name} must be a power of two, got {value}")
        if self.supersize < self.flow_size or self.supersize % self.flow_size:
            raise ValueError(
                f"supersize ({self.supersize}) must be a multiple of flow_size ({self.flow_size})"
            )
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}")
        pairs = _channel_pairs(self.channels) or reference_stn_channels(self.channel_multiplier)
        object.__setattr__(self, "channels", pairs)
        object.__setattr__(self, "blur_kernel", tuple(self.blur_kernel))
        if self.input_mask not in INPUT_MASKS:
            raise ValueError(f"input_mask must be one of {INPUT_MASKS}, got {self.input_mask!r}")

    @property
    def channel_table(self) -> dict[int, int]:
        return dict(self.channels)


class TrunkPlan(NamedTuple):
    stem: int  # channels of the 1x1 input ConvLayer
    blocks: tuple[tuple[int, bool], ...]  # (channels, downsample) of each ResBlock
    final: int  # channels of the final 3x3 ConvLayer


def trunk_plan(config: STNConfig, transform: str) -> TrunkPlan:
    """The reference's trunk layout: ResBlocks from flow_size down to 4x4 (similarity), or four
    ResBlocks of which the first log2(flow_downsample) halve the resolution (flow)."""
    table = config.channel_table
    is_flow = transform == "flow"
    log_size = int(math.log2(config.flow_size))
    end_log = log_size - 4 if is_flow else 2
    if end_log < 0:
        raise ValueError(f"flow_size {config.flow_size} is too small for a {transform} stage")

    def lookup(res):
        if res not in table:
            raise ValueError(
                f"the STN channel table has no entry for resolution {res} (needed by a "
                f"{transform} stage with flow_size {config.flow_size}); table: {table}"
            )
        return table[res]

    blocks, downsamples = [], 0
    max_downsamples = int(math.log2(config.flow_downsample))
    for i in range(log_size, end_log, -1):
        downsample = (not is_flow) or downsamples < max_downsamples
        downsamples += downsample
        blocks.append((lookup(2 ** (i - 1)), downsample))
    return TrunkPlan(lookup(config.flow_size), tuple(blocks), lookup(4))


def select_heads(heads, num_heads: int) -> jnp.ndarray:
    """(N,) head index per image from (N,) indices or (N, J) scores (argmax; modulo num_heads,
    so scores over 2K columns, the second K meaning 'mirrored', pick head j - K)."""
    heads = jnp.asarray(heads)
    if heads.ndim == 2:
        heads = jnp.argmax(heads, axis=1)
    if heads.ndim != 1:
        raise ValueError(f"heads must be (N,) indices or (N, J) scores, got shape {heads.shape}")
    return heads.astype(jnp.int32) % num_heads


class SpatialTransformer(nn.Module):
    """One stage: trunk -> warp head. Submodules are named after the reference's modules."""

    config: STNConfig
    transform: str
    policy: Policy = FLOAT32  # the trunk's and the flow head's convolutions

    def regression_input(self, images):
        size = self.config.flow_size
        if images.shape[2] > size:
            images = self._shrink(images, size)
        if self.config.input_mask == "disk":
            images = disk_vignette(images)
        return images

    @staticmethod
    def _shrink(images, size):
        factor = images.shape[2] // size
        if images.shape[1] != images.shape[2] or factor * size != images.shape[2]:
            raise ValueError(
                f"STN inputs must be square with a side that is a multiple of flow_size "
                f"({size}), got {images.shape[1:3]}"
            )
        return bilinear_downsample(images, factor)

    @nn.compact
    def __call__(
        self,
        images,
        source,
        *,
        output_size: int | None = None,
        heads=None,
        base_warp=None,
        alpha=None,
        padding_mode: str = "border",
        mirror_average: bool = False,
    ) -> HeadOutput:
        """mirror_average: a similarity stage regresses each image's warp from the image and its
        horizontal mirror together (see SimilarityHead); other stages ignore it."""
        cfg = self.config
        plan = trunk_plan(cfg, self.transform)
        taps = cfg.blur_kernel
        x = self.regression_input(images)
        mirror_average = mirror_average and self.transform == "similarity"
        if mirror_average:  # one trunk pass over the images and their mirrors
            x = jnp.concatenate([x, jnp.flip(x, axis=2)], axis=0)
        policy = self.policy
        x = ConvLayer(plan.stem, 1, blur_taps=taps, policy=policy, name="convs_0")(x)
        for j, (features, downsample) in enumerate(plan.blocks, start=1):
            x = ResBlock(features, downsample, taps, policy, name=f"convs_{j}")(x)
        x = ConvLayer(plan.final, 3, blur_taps=taps, policy=policy, name="final_conv")(x)
        warp_args = dict(heads=heads, base_warp=base_warp, alpha=alpha, padding_mode=padding_mode)
        if self.transform == "similarity":
            if x.shape[1:3] != (4, 4):
                raise ValueError(f"similarity trunk must end at 4x4, got {x.shape[1:3]}")
            features = x.reshape(x.shape[0], -1)  # (N, 4*4*C), flattened in (h, w, c) order
            features = EqualLinear(plan.final, activate=True, policy=policy, name="final_linear")(
                features
            )
            head = SimilarityHead(
                cfg.num_heads, cfg.antialias, cfg.max_mipmap_levels, name="warp_head"
            )
            return head(
                source,
                features,
                output_size=output_size or cfg.flow_size,
                mirror_average=mirror_average,
                **warp_args,
            )
        head = FlowHead(
            cfg.num_heads,
            cfg.flow_downsample,
            cfg.antialias,
            cfg.max_mipmap_levels,
            policy=policy,
            name="warp_head",
        )
        return head(source, x, output_size=output_size, **warp_args)


class STNOutput(NamedTuple):
    """Rows are M = N * num_heads (every image by every head) or N (one head per image)."""

    image: jnp.ndarray  # (M, R, R, C) congealed images, R = output_resolution or flow_size
    grid: jnp.ndarray  # (M, R, R, 2) final sampling grid into the source images
    flow: jnp.ndarray | None  # (M, F, F, 2) residual flow of the flow stage; None without one
    matrix: jnp.ndarray | None  # (M, 2, 3) similarity matrix (composed over iterations)
    similarity_image: jnp.ndarray | None  # (M, F, F, C) output of a first similarity stage
    similarity_grid: jnp.ndarray | None  # (M, F, F, 2) its sampling grid


def unfold_heads(output: STNOutput, num_heads: int) -> STNOutput:
    """Rows n * K + k of an every-head (cartesian) output -> (N, K, ...) per field.

    The reference's `unfold=True`: image (N, K, R, R, C), grid (N, K, R, R, 2), flow
    (N, K, F, F, 2), matrix (N, K, 2, 3), and the first similarity stage's image and grid alike.
    """

    def unfold(x):
        if x is None:
            return None
        if x.shape[0] % num_heads:
            raise ValueError(f"{x.shape[0]} rows are not N * {num_heads} heads")
        return x.reshape((x.shape[0] // num_heads, num_heads) + x.shape[1:])

    return STNOutput(*(unfold(field) for field in output))


class STN(nn.Module):
    """Spatial transformer of any stage sequence (reference SpatialTransformer / ComposedSTN).

    `policy` sets the numerics of the trunks and flow heads; the similarity regression, warps,
    grids and sampling are float32 at full precision whatever it says.
    """

    config: STNConfig
    policy: Policy = FLOAT32

    def setup(self):
        self.stns = [
            SpatialTransformer(self.config, t, self.policy) for t in self.config.transforms
        ]

    def __call__(
        self,
        images,
        source_images=None,
        *,
        output_resolution: int | None = None,
        iters: int = 1,
        alpha=None,
        padding_mode: str = "border",
        heads=None,
        mirror_average: bool = False,
    ) -> STNOutput:
        """Congeal `images` (N, H, W, C), H = flow_size or a multiple of it.

        source_images: (N, H*, W*, C) pixels to sample from (default: images), e.g. a higher
          resolution copy of the same images.
        output_resolution: output size; the final grid (not the pixels) is resized to it.
        iters: the first (similarity) stage is applied this many times, each time to its own
          output, composing the matrices.
        alpha: scalar or (N,); lerps the final stage's warp towards the identity.
        heads: None warps every image with every head (rows n * K + k); (N,) head indices or
          (N, J) cluster scores warp each image with one head.
        mirror_average: every similarity iteration regresses its warp from the image and its
          horizontal mirror together, cancelling the part of the STN's error that is not
          mirror-symmetric (for left-right symmetric categories; doubles the similarity cost).
        """
        cfg = self.config
        k = cfg.num_heads
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if iters < 1 or (iters > 1 and cfg.transforms[0] != "similarity"):
            raise ValueError(f"iters={iters}: only a first similarity stage can be iterated")
        n = images.shape[0]
        source = images if source_images is None else source_images
        row_heads = None if heads is None else select_heads(heads, k)
        if alpha is not None:
            alpha = jnp.broadcast_to(jnp.asarray(alpha, images.dtype), (n,))
        out, warp, flow, matrix, first = images, None, None, None, None
        last = len(self.stns) - 1
        for i, stage in enumerate(self.stns):
            repeats = iters if i == 0 else 1
            for it in range(repeats):
                final = i == last and it == repeats - 1
                result = stage(
                    out,
                    source,
                    output_size=output_resolution if final else None,
                    heads=row_heads,
                    base_warp=warp,
                    alpha=alpha if final else None,
                    padding_mode=padding_mode,
                    mirror_average=mirror_average,
                )
                if row_heads is None and k > 1:
                    # Every image went through every head; row n * K + k now follows head k.
                    source = jnp.repeat(source, k, axis=0)
                    row_heads = jnp.tile(jnp.arange(k, dtype=jnp.int32), out.shape[0])
                    alpha = None if alpha is None else jnp.repeat(alpha, k, axis=0)
                out, warp = result.image, result.warp
                if stage.transform == "similarity":
                    matrix = warp
                else:
                    flow = warp
            if i == 0 and stage.transform == "similarity":
                first = result
        return STNOutput(
            image=out,
            grid=result.grid,
            flow=flow,
            matrix=matrix,
            similarity_image=None if first is None else first.image,
            similarity_grid=None if first is None else first.grid,
        )
