"""Perceptual distances between image batches: LPIPS (VGG16), SimCLR-VGG, and a weight-free one.

Every distance maps two NHWC batches `x`, `y` of shape (N, H, W, 3) with values in [-1, 1] to one
value per pair, shape (N,). All are pure functions of arrays, so `jax.jit`, `jax.grad` and sharded
batches accept them.

Weights are passed explicitly (a `PerceptualWeights` pytree). `get_perceptual_loss(config)` binds
them with `jax.tree_util.Partial`: the result is called as `loss(x, y)` and is itself a pytree whose
leaves are the weights, so it can be closed over (weights become jit constants) or passed as a jit
argument (weights stay device buffers, shared by every compiled function that receives them).

Converted weight bundles are single `.npz` files with flat keys, written by
`python -m gangealing_jax.convert.perceptual` (see `bundle_to_flat` for the layout).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax.errors import ConfigError, InputFileError, MissingWeightsError
from gangealing_jax.models.vgg import VGG16, VGGFeatures, conv_name, stages_from_params
from gangealing_jax.ops.precision import FLOAT32, Policy

# LPIPS v0.1 input scaling: (x - shift) / scale maps [-1, 1] images to ImageNet statistics.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# The reference divides the head-less SimCLR-VGG distance by this constant.
VGG_SSL_DIVISOR = 18.0
# Added to the feature norm before dividing, as in the reference's unit normalisation.
_NORM_EPS = 1e-10

WEIGHTED_LOSSES = ("lpips", "vgg_ssl")
WEIGHT_FREE_LOSSES = ("multiscale_structural",)

_HOW_TO_CONVERT = {
    "lpips": (
        "The 'lpips' loss needs torchvision's ImageNet VGG16 "
        "(vgg16-397923af.pth, https://download.pytorch.org/models/vgg16-397923af.pth) and the "
        "LPIPS v0.1 linear heads (weights/v0.1/vgg.pth of the `lpips` package, "
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth). "
        "Convert them with:\n  python -m gangealing_jax.convert.perceptual "
        "--vgg vgg16-397923af.pth --lpips-heads vgg.pth --out {path}"
    ),
    "vgg_ssl": (
        "The 'vgg_ssl' loss needs the GANgealing SimCLR VGG16 (simclr_vgg_phase150.pt, "
        "http://efrosgans.eecs.berkeley.edu/gangealing/pretrained/simclr_vgg_phase150.pt). "
        "Convert it with:\n  python -m gangealing_jax.convert.perceptual "
        "--simclr simclr_vgg_phase150.pt --out {path}"
    ),
}


class PerceptualWeights(NamedTuple):
    """Weights of the VGG-based distances.

    vgg: flax params of `VGG16` ({'conv1_1': {'kernel': (3, 3, 3, 64), 'bias': (64,)}, ...}).
    heads: LPIPS linear heads, one (C_s,) vector per VGG tap, or None (vgg_ssl needs none).
    shift, scale: (3,) input scaling.
    """

    vgg: dict
    heads: tuple | None
    shift: jax.Array
    scale: jax.Array


class LayerDistances(NamedTuple):
    """Per-tap terms of a distance, each (N,); their sum is the distance (before any divisor)."""

    relu1_2: jax.Array
    relu2_2: jax.Array
    relu3_3: jax.Array
    relu4_3: jax.Array
    relu5_3: jax.Array


def _check_pair(x, y):
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(
            f"expected two (N, H, W, C) batches of equal shape, got {x.shape}, {y.shape}"
        )


def _unit_normalize(features):
    """features / (||features||_channels + eps).

    At an all-zero (dead ReLU) feature vector sqrt's derivative is infinite, but the ReLU's
    gradient is a select that discards that cotangent, so gradients w.r.t. images stay finite.
    """
    norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True))
    return features / (norm + _NORM_EPS)


def _vgg_features(weights: PerceptualWeights, x, y, normalize: bool, policy: Policy):
    """Features of x and y from one VGG pass over the concatenated batch."""
    _check_pair(x, y)
    if normalize:  # inputs in [0, 1]
        x, y = 2 * x - 1, 2 * y - 1
    both = jnp.concatenate([x, y], axis=0)  # (2N, H, W, 3)
    both = (both - weights.shift) / weights.scale
    vgg = VGG16(stages=stages_from_params(weights.vgg), policy=policy)
    features = vgg.apply({"params": weights.vgg}, both)
    n = x.shape[0]
    return [(f[:n], f[n:]) for f in features]


def _layer_distances(weights, x, y, heads, normalize, policy) -> LayerDistances:
    terms = []
    for k, (fx, fy) in enumerate(_vgg_features(weights, x, y, normalize, policy)):
        diff = jnp.square(_unit_normalize(fx) - _unit_normalize(fy))  # (N, h, w, C)
        if heads is None:
            per_pixel = jnp.sum(diff, axis=-1)
        else:
            per_pixel = jnp.einsum("nhwc,c->nhw", diff, heads[k], precision="highest")
        terms.append(jnp.mean(per_pixel, axis=(1, 2)))
    return LayerDistances(*terms)


def lpips_layer_distances(
    weights: PerceptualWeights, x, y, normalize: bool = False, policy: Policy = FLOAT32
) -> LayerDistances:
    """LPIPS terms per VGG tap: spatial mean of head(squared difference of unit features).

    The VGG convolutions follow `policy`; features are normalised and compared in float32.
    """
    if weights.heads is None:
        raise ValueError("these weights have no LPIPS heads; convert them with --lpips-heads")
    return _layer_distances(weights, x, y, weights.heads, normalize, policy)


def lpips_distance(weights: PerceptualWeights, x, y, normalize: bool = False, policy=FLOAT32):
    """LPIPS (VGG16, v0.1). x, y: (N, H, W, 3) in [-1, 1] ([0, 1] with normalize=True). -> (N,)."""
    return sum(lpips_layer_distances(weights, x, y, normalize, policy))


def vgg_ssl_distance(weights: PerceptualWeights, x, y, normalize: bool = False, policy=FLOAT32):
    """Head-less LPIPS on a (SimCLR) VGG16, divided by 18 as the reference does. -> (N,)."""
    return sum(_layer_distances(weights, x, y, None, normalize, policy)) / VGG_SSL_DIVISOR


def _box3(x):
    """3x3 mean over H, W without padding: (N, H, W, C) -> (N, H-2, W-2, C)."""
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "VALID")
    return total / 9.0


def _halve(x):
    """2x2 average pooling with stride 2 (a trailing odd row/column is dropped)."""
    h, w = (x.shape[1] // 2) * 2, (x.shape[2] // 2) * 2
    x = x[:, :h, :w]
    return 0.25 * (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2])


def _single_scale_terms(x, y):
    """Pixel, gradient and SSIM-dissimilarity terms at one scale, each (N,)."""
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2  # SSIM constants for a data range of 2
    d = x - y
    pixel = jnp.mean(jnp.square(d), axis=(1, 2, 3))
    gradient = jnp.mean(jnp.square(d[:, 1:] - d[:, :-1]), axis=(1, 2, 3)) + jnp.mean(
        jnp.square(d[:, :, 1:] - d[:, :, :-1]), axis=(1, 2, 3)
    )
    # 1 - SSIM = (1 - l) + l (1 - cs). Both factors are written through d = x - y so that they
    # vanish exactly (not just up to rounding) for identical inputs.
    mean_x, mean_y, mean_d = _box3(x), _box3(y), _box3(d)
    var_x = jnp.maximum(_box3(x * x) - mean_x**2, 0.0)
    var_y = jnp.maximum(_box3(y * y) - mean_y**2, 0.0)
    var_d = jnp.maximum(_box3(d * d) - mean_d**2, 0.0)  # = var_x + var_y - 2 cov_xy
    luminance_gap = mean_d**2 / (mean_x**2 + mean_y**2 + c1)  # 1 - l
    structure_gap = var_d / (var_x + var_y + c2)  # 1 - cs
    dssim = luminance_gap + (1.0 - luminance_gap) * structure_gap
    return pixel + gradient + jnp.mean(dssim, axis=(1, 2, 3))


def _standardize(x):
    """Each image's channels shifted and scaled to mean 0 and standard deviation 1/2 over H, W."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True) + 1e-6)
    return 0.5 * (x - mean) / std


def multiscale_structural_distance(x, y, num_scales: int = 3, standardize: bool = False):
    """Weight-free perceptual distance, (N,). x, y: (N, H, W, C) in [-1, 1].

    Mean over `num_scales` 2x-average-pooled scales (fewer if the image gets smaller than 3x3) of:
    mean squared pixel difference + mean squared difference of horizontal and vertical finite
    differences + mean local dissimilarity 1 - SSIM (3x3 box windows). Exactly 0 for identical
    inputs, positive otherwise, smooth almost everywhere. With `standardize`, each image's channels
    are first brought to mean 0 and standard deviation 1/2: the distance then ignores a per-channel
    gain and offset (e.g. the same face in another colour on a like background).
    """
    _check_pair(x, y)
    if min(x.shape[1:3]) < 3:
        raise ValueError(f"images must be at least 3x3, got {x.shape}")
    if standardize:
        x, y = _standardize(x), _standardize(y)
    total, used = 0.0, 0
    for scale in range(num_scales):
        if scale > 0:
            if min(x.shape[1:3]) < 6:
                break
            x, y = _halve(x), _halve(y)
        total = total + _single_scale_terms(x, y)
        used += 1
    return total / used


@dataclasses.dataclass(frozen=True)
class MultiscaleStructural:
    """`multiscale_structural_distance` with a static `num_scales`.

    Equal settings compare equal, so a re-created loss passed to a jitted function reuses its
    compilation; `num_scales` never becomes a traced pytree leaf.
    """

    num_scales: int = 3
    standardize: bool = False

    def __call__(self, x, y):
        return multiscale_structural_distance(x, y, self.num_scales, self.standardize)


def bundle_to_flat(weights: PerceptualWeights) -> dict:
    """Flat `.npz` layout: vgg/<conv>/{kernel,bias}, heads/<k> (if any), scaling/{shift,scale}."""
    flat = {
        f"vgg/{name}/{leaf}": np.asarray(value)
        for name, conv in weights.vgg.items()
        for leaf, value in conv.items()
    }
    if weights.heads is not None:
        flat.update({f"heads/{k}": np.asarray(h) for k, h in enumerate(weights.heads)})
    flat["scaling/shift"] = np.asarray(weights.shift)
    flat["scaling/scale"] = np.asarray(weights.scale)
    return flat


def bundle_from_flat(flat: Mapping[str, np.ndarray]) -> PerceptualWeights:
    """Inverse of `bundle_to_flat`; missing scaling keys fall back to the LPIPS v0.1 constants."""
    vgg: dict = {}
    for key, value in flat.items():
        parts = key.split("/")
        if parts[0] == "vgg" and len(parts) == 3:
            vgg.setdefault(parts[1], {})[parts[2]] = jnp.asarray(value)
    if conv_name(0, 0) not in vgg:
        raise ValueError(f"no VGG weights (keys vgg/conv1_1/kernel, ...) among {sorted(flat)[:8]}")
    stages_from_params(vgg)  # validates the layout
    heads = None
    if "heads/0" in flat:
        heads = tuple(jnp.asarray(flat[f"heads/{k}"]) for k in range(len(VGGFeatures._fields)))
    shift = jnp.asarray(flat.get("scaling/shift", np.float32(LPIPS_SHIFT)), jnp.float32)
    scale = jnp.asarray(flat.get("scaling/scale", np.float32(LPIPS_SCALE)), jnp.float32)
    return PerceptualWeights(vgg, heads, shift.reshape(3), scale.reshape(3))


def require_weights(path: str | os.PathLike | None, loss_name: str) -> str:
    """`path` when it names an existing file; else MissingWeightsError saying how to make one."""
    guidance = _HOW_TO_CONVERT[loss_name]
    if not path:
        raise MissingWeightsError(
            f"--config.loss.weights is not set. {guidance.format(path='perceptual_weights.npz')}"
        )
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingWeightsError(
            f"perceptual loss weights file '{path}' not found. {guidance.format(path=path)}"
        )
    return path


def load_perceptual_weights(path: str | os.PathLike | None, loss_name: str) -> PerceptualWeights:
    """Read a converted bundle for `loss_name` ('lpips' or 'vgg_ssl'), with guidance if missing."""
    path = require_weights(path, loss_name)
    guidance = _HOW_TO_CONVERT[loss_name]
    with np.load(path, allow_pickle=False) as data:
        weights = bundle_from_flat({k: data[k] for k in data.files})
    if loss_name == "lpips" and weights.heads is None:
        raise InputFileError(f"'{path}' holds no LPIPS heads. {guidance.format(path=path)}")
    return weights


def get_perceptual_loss(config, policy: Policy = FLOAT32) -> Callable:
    """The distance named by `config.loss.name`, as a pure callable (x, y) -> (N,).

    config.loss.name: 'lpips', 'vgg_ssl' or 'multiscale_structural'.
    config.loss.weights: path of a converted `.npz` bundle (lpips and vgg_ssl only).
    config.loss.num_scales, config.loss.standardize: optional, for 'multiscale_structural'
      (defaults 3 and False).
    For the VGG losses the result is a `jax.tree_util.Partial` holding the weights (see module doc)
    and `policy`, which the VGG convolutions follow (the weight-free loss has no convolutions).
    """
    loss_config = config.loss
    name = loss_config.name
    if name == "multiscale_structural":
        num_scales = int(getattr(loss_config, "num_scales", 3) or 3)
        standardize = bool(getattr(loss_config, "standardize", False))
        return jax.tree_util.Partial(MultiscaleStructural(num_scales, standardize))
    if name not in WEIGHTED_LOSSES:
        known = ", ".join(WEIGHTED_LOSSES + WEIGHT_FREE_LOSSES)
        raise ConfigError(f"--config.loss.name={name}: unknown perceptual loss (known: {known})")
    weights = load_perceptual_weights(getattr(loss_config, "weights", None), name)
    distance = lpips_distance if name == "lpips" else vgg_ssl_distance
    return jax.tree_util.Partial(distance, weights, policy=policy)
