"""PCK-Transfer that a perfect similarity alignment reaches on a held-out procedural family.

Each face is drawn in a canonical frame and placed by a known similarity pose (and mirror), so
undoing exactly that pose is the best a similarity STN can do; what is left is the faces' own
variation (feature shapes, the mild bend). This is the ceiling for `configs/embedded.py` without a
flow stage. Prints one JSON line per alpha, for the default run's evaluation set:

    python -m benchmarks.similarity_ceiling [--family butterflies] [--count 500] [--pairs 1000]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from gangealing_jax.data import families, procedural

EVAL_SEED = 1_000_003  # configs/default.py eval.seed: the default run's held-out faces


def canonical_keypoints_of(
    seed: int, count: int, config: procedural.ProceduralConfig, family: str = "faces"
):
    """(count, P, 2) keypoints in the canonical frame after undoing each pose, with the pixel
    scale (count,), bbox side (count,) and visibility (count, P) of each rendered object."""
    module = families.family_module(family)
    points, scales, sides, visible = [], [], [], []
    for index in range(count):
        scene = module.sample_scene(procedural.sample_rng(seed, index), config)
        sample = module.render_scene(scene, config)
        canonical = module.scene_keypoints(scene)  # the pose undone, the bend kept
        if scene.pose.flip:  # a mirrored object's left/right keypoints swap (see procedural.py)
            canonical = (canonical * np.array([-1.0, 1.0]))[module.FLIP_PERMUTATION]
        points.append(canonical)
        scales.append(scene.pose.scale * config.resolution / 2)  # canonical unit -> pixels
        x0, y0, x1, y1 = sample.bbox
        sides.append(max(x1 - x0, y1 - y0))
        visible.append(sample.keypoints[:, 2] > 0)
    return np.stack(points), np.array(scales), np.array(sides), np.stack(visible)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="faces", choices=sorted(families.FAMILIES))
    parser.add_argument("--count", type=int, default=500, help="images rendered")
    parser.add_argument("--pairs", type=int, default=1000, help="random (source, target) pairs")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair draw")
    args = parser.parse_args(argv)
    config = families.family_config(args.family, resolution=args.resolution, clutter_range=(1, 4))
    points, scales, sides, visible = canonical_keypoints_of(
        EVAL_SEED, args.count, config, args.family
    )
    rng = np.random.default_rng(args.seed)
    pairs = np.array([rng.choice(args.count, 2, replace=False) for _ in range(args.pairs)])
    source, target = pairs[:, 0], pairs[:, 1]
    # The source's keypoints, carried through the shared canonical frame into the target image.
    error = np.linalg.norm(points[source] - points[target], axis=-1) * scales[target, None]
    both = visible[source] & visible[target]
    for alpha in (0.1, 0.05):
        correct = error <= alpha * sides[target, None]
        print(json.dumps({
            "benchmark": "similarity_ceiling", "family": args.family, "alpha": alpha, "protocol": "spair",
            "pck": float(correct[both].mean()), "pairs": int(args.pairs),
            "keypoints": int(both.sum()),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
