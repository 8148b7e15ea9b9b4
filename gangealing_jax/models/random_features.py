"""A fixed, randomly weighted VGG-like conv net: the feature space of the GAN quality measure.

No downloaded weights: `feature_net_params(seed)` draws them with numpy from a fixed seed, so every
installation computes the same features. Random conv nets keep the low-level statistics of an
image (colour, local texture, coarse layout) and none of the semantics a trained classifier
learns: distances in this space say how far two image sets are apart in those statistics, and are
comparable only with distances computed by the same net (same seed, widths, image size).

Images (N, H, W, 3) in [-1, 1], H and W multiples of 2 ** (stages - 1) * 2. Features (N, D):
the spatial mean of every stage's output, then the last stage's output averaged over a 2x2 grid
(where in the image things are), D = sum(widths[:-1]) + 4 * widths[-1].
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax.ops.conv import conv2d

DEFAULT_SEED = 0
# Conv widths per stage; a 2x2 average pool between stages.
DEFAULT_STAGES: tuple[tuple[int, ...], ...] = ((16, 16), (32, 32), (64, 64))


def feature_net_params(
    seed: int = DEFAULT_SEED, stages: tuple[tuple[int, ...], ...] = DEFAULT_STAGES
) -> dict:
    """He-initialised kernels (3, 3, in, out), zero biases, drawn with numpy: {'params': ...}."""
    rng = np.random.default_rng(seed)
    params, cin = {}, 3
    for s, widths in enumerate(stages):
        for j, width in enumerate(widths):
            kernel = rng.standard_normal((3, 3, cin, width)) * np.sqrt(2.0 / (9 * cin))
            params[f"conv{s}_{j}"] = {
                "kernel": jnp.asarray(kernel, jnp.float32),
                "bias": jnp.zeros((width,), jnp.float32),
            }
            cin = width
    return {"params": params}


def feature_dim(stages: tuple[tuple[int, ...], ...] = DEFAULT_STAGES) -> int:
    return sum(widths[-1] for widths in stages[:-1]) + 4 * stages[-1][-1]


class RandomFeatureNet(nn.Module):
    """Images (N, H, W, 3) in [-1, 1] -> features (N, feature_dim(stages)), float32."""

    stages: tuple[tuple[int, ...], ...] = DEFAULT_STAGES

    @nn.compact
    def __call__(self, images):
        n, h, w, _ = images.shape
        step = 2 ** len(self.stages)  # pools between stages, then the 2x2 grid
        if h % step or w % step:
            raise ValueError(f"image sides must be multiples of {step}, got {h}x{w}")
        x, pooled = images.astype(jnp.float32), []
        for s, widths in enumerate(self.stages):
            if s:
                x = _average_pool(x, 2)
            for j, width in enumerate(widths):
                x = jax.nn.relu(_Conv3x3(width, name=f"conv{s}_{j}")(x))
            pooled.append(jnp.mean(x, axis=(1, 2)))  # (N, C_s)
        grid = _average_pool(x, x.shape[1] // 2).reshape(n, -1)  # (N, 4 * C_last)
        return jnp.concatenate(pooled[:-1] + [grid], axis=-1)


def _average_pool(x, k: int):
    n, h, w, c = x.shape
    return x.reshape(n, h // k, k, w // k, k, c).mean(axis=(2, 4))


class _Conv3x3(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        # Zeros only give Flax the shapes: the weights always come from feature_net_params.
        kernel = self.param("kernel", nn.initializers.zeros, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return conv2d(x, kernel, padding=1) + bias
