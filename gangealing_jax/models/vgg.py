"""VGG16 convolutional trunk returning the five ReLU activations that LPIPS compares.

The trunk is torchvision's `vgg16().features` up to relu5_3, in NHWC: five stages of 3x3 convs
(padding 1) with ReLU, each stage after the first preceded by a 2x2 / stride 2 max pool. Parameters
are named `conv<stage>_<index>` (1-based) with `kernel` (3, 3, in, out) and `bias` (out,).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax

from gangealing_jax.ops.precision import FLOAT32, Policy, widen

# Output widths of the convs in each stage of VGG16.
VGG16_STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)


# torchvision's VGG init (kaiming_normal_, mode="fan_out", relu gain); biases start at zero.
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class VGGFeatures(NamedTuple):
    """The last ReLU output of each stage, (N, H / 2**s, W / 2**s, C_s) for stage s = 0..4."""

    relu1_2: jax.Array
    relu2_2: jax.Array
    relu3_3: jax.Array
    relu4_3: jax.Array
    relu5_3: jax.Array


def conv_name(stage: int, index: int) -> str:
    """Parameter name of conv `index` (0-based) in stage `stage` (0-based): 'conv1_1', ..."""
    return f"conv{stage + 1}_{index + 1}"


def stages_from_params(params: Mapping) -> tuple[tuple[int, ...], ...]:
    """Stage widths of a VGG parameter tree, read from the kernel shapes (static under jit)."""
    stages = []
    stage = 0
    while conv_name(stage, 0) in params:
        widths = []
        index = 0
        while conv_name(stage, index) in params:
            widths.append(int(params[conv_name(stage, index)]["kernel"].shape[-1]))
            index += 1
        stages.append(tuple(widths))
        stage += 1
    if len(stages) != len(VGGFeatures._fields):
        raise ValueError(
            f"VGG parameters must hold {len(VGGFeatures._fields)} stages of convs named "
            f"conv<stage>_<index>, found {len(stages)} (keys: {sorted(params)})"
        )
    return tuple(stages)


class VGG16(nn.Module):
    """VGG16 feature trunk; `stages` gives the conv widths per stage (five stages).

    The convolutions follow `policy` (parameters stay float32); the taps are float32.
    """

    stages: Sequence[Sequence[int]] = VGG16_STAGES
    policy: Policy = FLOAT32

    @nn.compact
    def __call__(self, x: jax.Array) -> VGGFeatures:
        """x: (N, H, W, 3) already scaled as the weights expect. Returns the five stage taps."""
        if len(self.stages) != len(VGGFeatures._fields):
            raise ValueError(f"VGG16 needs 5 stages, got {len(self.stages)}")
        taps = []
        for stage, widths in enumerate(self.stages):
            if stage > 0:
                # torch MaxPool2d(2, 2) drops a trailing odd row/column, as VALID pooling does.
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for index, width in enumerate(widths):
                x = nn.Conv(
                    width,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    precision=self.policy.precision,
                    dtype=self.policy.compute_dtype,
                    kernel_init=_KAIMING_FAN_OUT,
                    name=conv_name(stage, index),
                )(x)
                x = nn.relu(x)
            taps.append(widen(x))
        return VGGFeatures(*taps)
