"""Which weight-free distance makes alignment dominate appearance on the procedural faces?

python -m benchmarks.weight_free_loss [--pairs 200] [--curves 16] [--seed 0] [--net-seed 0]
    [--only l2,random_vgg]

For each candidate distance and resolution (32, 64) it prints one JSON line with:
- spearman: rank correlation between d(reference, same face under a perturbed pose) and the
  mean keypoint displacement (pixels) of that perturbation, over `--pairs` references;
- alignment_wins_vs_other / _vs_other_same_background: over all (misaligned same-face pair,
  aligned different-face pair) combinations, the fraction where the aligned different face
  scores lower, overall and per displacement bin (fractions of the image side). Congealing wants
  this high: a different face in the right pose should look closer than the same face in a wrong
  pose. "other" has its own bend and cluttered background, "other_same_background" is drawn
  over the reference's background (identity against alignment alone);
- shift_vs_{same_face,other,other_same_background} (64x64 only): the reference face shifted
  horizontally by -12..12 px against that target in the unshifted pose. "curve" is the mean
  distance normalised per face by its value at +-12 px; "descent_success" the fraction of
  (face, start) where walking downhill from +-6 px (10% of the side) stops within 1 px of zero;
  "argmin_px" the mean |shift| of the minimum.

Every image is re-rendered from a procedural.Scene, so nothing is resampled; the background
does not move with the pose. The random VGG-like net's weights are drawn with numpy from
--net-seed and live only here.
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import device_summary, emit
from gangealing_jax.data import procedural
from gangealing_jax.losses.perceptual import multiscale_structural_distance

RESOLUTIONS = (32, 64)
SHIFTS = tuple(range(-12, 13))
DESCENT_START = 6  # pixels at 64x64, about 10% of the side
# Perturbation ranges; each pair draws them times one global factor in [0, 1] so that small
# misalignments are as common as large ones.
MAX_ROTATION_DEG = 20.0
MAX_LOG_SCALE = np.log(1.2)
MAX_TRANSLATION = 0.2  # normalized frame units (10% of the side)
DISPLACEMENT_BINS = (0.0, 0.02, 0.05, 0.1, 1.0)  # fractions of the side
RANDOM_NET_WIDTHS = ((16, 16), (32, 32), (64, 64))


# ----------------------------------------------------------------------------- candidates


def pixel_l2(x, y):
    return jnp.mean(jnp.square(x - y), axis=(1, 2, 3))


def pixel_l1(x, y):
    return jnp.mean(jnp.abs(x - y), axis=(1, 2, 3))


def blurred_l2(x, y, sigma: float = 2.0):
    """MSE after a separable Gaussian blur (a low-pass baseline with a wider basin)."""
    radius = int(3 * sigma)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = jnp.asarray(taps / taps.sum(), jnp.float32)
    d = x - y
    channels = d.shape[-1]
    for shape in ((len(taps), 1), (1, len(taps))):
        kernel = jnp.tile(taps.reshape(*shape, 1, 1), (1, 1, 1, channels))
        d = jax.lax.conv_general_dilated(
            d,
            kernel,
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
        )
    return jnp.mean(jnp.square(d), axis=(1, 2, 3))


def random_vgg_weights(seed: int) -> list[list[tuple[jax.Array, jax.Array]]]:
    """He-initialised 3x3 conv stages, drawn with numpy from a fixed seed."""
    rng = np.random.default_rng(seed)
    stages, cin = [], 3
    for widths in RANDOM_NET_WIDTHS:
        stage = []
        for width in widths:
            kernel = rng.standard_normal((3, 3, cin, width)).astype(np.float32)
            kernel *= np.sqrt(2.0 / (9 * cin))
            stage.append((jnp.asarray(kernel), jnp.zeros((width,), jnp.float32)))
            cin = width
        stages.append(stage)
    return stages


def random_vgg_distance(stages, x, y):
    """Head-less LPIPS on a random VGG-like net: unit-normalised features at each stage's end."""
    h = jnp.concatenate([x, y], axis=0)
    n = x.shape[0]
    total = 0.0
    for index, stage in enumerate(stages):
        if index > 0:
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        for kernel, bias in stage:
            h = jax.lax.conv_general_dilated(
                h, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            h = jax.nn.relu(h + bias)
        unit = h / (jnp.sqrt(jnp.sum(jnp.square(h), axis=-1, keepdims=True)) + 1e-10)
        total = total + jnp.mean(jnp.sum(jnp.square(unit[:n] - unit[n:]), axis=-1), axis=(1, 2))
    return total


def candidates(seed: int) -> dict:
    stages = random_vgg_weights(seed)
    table = {
        "l2": pixel_l2,
        "l1": pixel_l1,
        **{
            f"multiscale_structural_{k}": functools.partial(
                multiscale_structural_distance, num_scales=k
            )
            for k in (1, 2, 3)
        },
        "random_vgg": functools.partial(random_vgg_distance, stages),
        "blurred_l2": blurred_l2,
    }
    return {name: jax.jit(fn) for name, fn in table.items()}


def batched(fn, x, y, batch: int = 64) -> np.ndarray:
    """fn over (N, H, W, 3) pairs in fixed-size chunks (the last one padded: one compilation)."""
    out = []
    for start in range(0, len(x), batch):
        xs, ys = x[start : start + batch], y[start : start + batch]
        pad = batch - len(xs)
        if pad:
            xs = np.concatenate([xs, np.repeat(xs[-1:], pad, 0)])
            ys = np.concatenate([ys, np.repeat(ys[-1:], pad, 0)])
        out.append(np.asarray(fn(jnp.asarray(xs), jnp.asarray(ys)))[: batch - pad])
    return np.concatenate(out)


# ----------------------------------------------------------------------------- data


def to_signed(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 127.5 - 1.0


def perturb(pose: procedural.Pose, rng: np.random.Generator) -> procedural.Pose:
    size = rng.uniform()
    return pose._replace(
        angle=pose.angle + size * np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)),
        scale=pose.scale * np.exp(size * rng.uniform(-MAX_LOG_SCALE, MAX_LOG_SCALE)),
        tx=pose.tx + size * rng.uniform(-MAX_TRANSLATION, MAX_TRANSLATION),
        ty=pose.ty + size * rng.uniform(-MAX_TRANSLATION, MAX_TRANSLATION),
    )


def keypoint_displacement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance (pixels) over keypoints visible in both (P, 3) sets."""
    both = (a[:, 2] > 0) & (b[:, 2] > 0)
    if not both.any():
        both[:] = True
    return float(np.mean(np.linalg.norm(a[both, :2] - b[both, :2], axis=-1)))


class PairSet(NamedTuple):
    reference: np.ndarray  # (N, H, W, 3) in [-1, 1]
    moved: np.ndarray  # the same scene under a perturbed pose
    other: np.ndarray  # another face, bend and background, in the reference pose
    other_same_background: np.ndarray  # another face and bend over the reference's background
    displacement: np.ndarray  # (N,) mean keypoint displacement / side


def scenes(seed: int, count: int, config: procedural.ProceduralConfig, stream: int):
    return [
        procedural.sample_scene(procedural.sample_rng(seed, stream * 100_000 + i), config)
        for i in range(count)
    ]


def pair_set(seed: int, count: int, resolution: int) -> PairSet:
    """Reference, perturbed same-face and aligned different-face images, and displacements."""
    config = procedural.ProceduralConfig(resolution=resolution)
    references = scenes(seed, count, config, stream=0)
    others = scenes(seed, count, config, stream=1)
    rng = np.random.default_rng(seed)
    images = {"reference": [], "moved": [], "other": [], "other_same_background": []}
    displacement = []
    for reference, other in zip(references, others, strict=True):
        base = procedural.render_scene(reference, config)
        moved = procedural.render_scene(
            reference._replace(pose=perturb(reference.pose, rng)), config
        )
        other = other._replace(pose=reference.pose)
        same_background = other._replace(background_seed=reference.background_seed)
        images["reference"].append(base.image)
        images["moved"].append(moved.image)
        images["other"].append(procedural.render_scene(other, config).image)
        images["other_same_background"].append(
            procedural.render_scene(same_background, config).image
        )
        displacement.append(keypoint_displacement(base.keypoints, moved.keypoints))
    stacked = {k: to_signed(np.stack(v)) for k, v in images.items()}
    return PairSet(**stacked, displacement=np.asarray(displacement) / resolution)


def shift_set(seed: int, count: int, resolution: int = 64):
    """References shifted horizontally by every SHIFTS pixels, and two different faces in the
    unshifted pose: one with its own background, one over the reference's background.

    Returns shifted (count, len(SHIFTS), H, W, 3) and {'same_face', 'other',
    'other_same_background'}: (count, H, W, 3) targets.
    """
    config = procedural.ProceduralConfig(resolution=resolution)
    references = scenes(seed, count, config, stream=2)
    others = scenes(seed, count, config, stream=3)
    pixel = 2.0 / resolution
    targets = {"same_face": [], "other": [], "other_same_background": []}
    shifted = []
    for reference, other in zip(references, others, strict=True):
        # Centre the face so that +-12 px keeps it inside the frame.
        reference = reference._replace(pose=reference.pose._replace(tx=0.0, ty=0.0))
        other = other._replace(pose=reference.pose)
        targets["same_face"].append(procedural.render_scene(reference, config).image)
        targets["other"].append(procedural.render_scene(other, config).image)
        same_background = other._replace(background_seed=reference.background_seed)
        targets["other_same_background"].append(
            procedural.render_scene(same_background, config).image
        )
        for shift in SHIFTS:
            moved = reference._replace(pose=reference.pose._replace(tx=shift * pixel))
            shifted.append(procedural.render_scene(moved, config).image)
    shifted = to_signed(np.stack(shifted)).reshape(count, len(SHIFTS), resolution, resolution, 3)
    return shifted, {k: to_signed(np.stack(v)) for k, v in targets.items()}


# ----------------------------------------------------------------------------- metrics


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def alignment_wins(same: np.ndarray, different: np.ndarray, displacement: np.ndarray) -> dict:
    """Fraction of (same misaligned, different aligned) combinations where different < same."""
    wins = different[None, :] < same[:, None]  # (same pair, different pair)
    result = {"all": float(wins.mean())}
    for lo, hi in zip(DISPLACEMENT_BINS[:-1], DISPLACEMENT_BINS[1:], strict=True):
        rows = (displacement >= lo) & (displacement < hi)
        if rows.any():
            result[f"{lo:g}-{hi:g}"] = float(wins[rows].mean())
    return result


def descends_to_centre(curve: np.ndarray, start: int) -> bool:
    """Walk downhill on integer shifts from `start`; success if it stops within 1 px of 0."""
    index = SHIFTS.index(start)
    while True:
        step = min(
            (index - 1, index + 1), key=lambda j: curve[j] if 0 <= j < len(curve) else np.inf
        )
        if not 0 <= step < len(curve) or curve[step] >= curve[index]:
            break
        index = step
    return abs(SHIFTS[index]) <= 1


def curve_summary(curves: np.ndarray) -> dict:
    """curves: (references, shifts) distances."""
    edge = 0.5 * (curves[:, 0] + curves[:, -1])
    mean_curve = np.mean(curves / edge[:, None], axis=0)
    success = [descends_to_centre(c, s) for c in curves for s in (-DESCENT_START, DESCENT_START)]
    return {
        "curve": [round(float(v), 3) for v in mean_curve],
        "descent_success": float(np.mean(success)),
        "argmin_px": float(np.mean([abs(SHIFTS[int(np.argmin(c))]) for c in curves])),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--curves", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="procedural data seed")
    parser.add_argument("--net-seed", type=int, default=0, help="seed of the random VGG weights")
    parser.add_argument("--only", default="", help="comma-separated candidate names (default all)")
    args = parser.parse_args()

    start = time.perf_counter()
    distances = candidates(args.net_seed)
    if args.only:
        distances = {name: distances[name] for name in args.only.split(",")}
    pairs = {res: pair_set(args.seed, args.pairs, res) for res in RESOLUTIONS}
    shifted, targets = shift_set(args.seed, args.curves)
    render_s = time.perf_counter() - start
    count, num_shifts = shifted.shape[:2]
    for name, distance in distances.items():
        for res in RESOLUTIONS:
            pair = pairs[res]
            same = batched(distance, pair.reference, pair.moved)
            record = {
                "candidate": name,
                "seed": args.seed,
                **({"net_seed": args.net_seed} if name == "random_vgg" else {}),
                "resolution": res,
                "pairs": len(same),
                "spearman": round(spearman(same, pair.displacement), 4),
            }
            for key in ("other", "other_same_background"):
                diff = batched(distance, pair.reference, getattr(pair, key))
                wins = alignment_wins(same, diff, pair.displacement)
                record[f"alignment_wins_vs_{key}"] = {k: round(v, 4) for k, v in wins.items()}
            if res == 64:
                flat = shifted.reshape(count * num_shifts, *shifted.shape[2:])
                record["shift_px"] = list(SHIFTS)
                for key, target in targets.items():
                    repeated = np.repeat(target, num_shifts, axis=0)
                    curves = batched(distance, repeated, flat).reshape(count, num_shifts)
                    record[f"shift_vs_{key}"] = curve_summary(curves)
            emit(record)
    emit(
        {
            "summary": "weight_free_loss",
            "render_s": round(render_s, 1),
            "total_s": round(time.perf_counter() - start, 1),
            **device_summary(),
        }
    )


if __name__ == "__main__":
    main()
