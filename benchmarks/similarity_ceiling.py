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
    points, scales = families.canonical_keypoints_of(family, seed, count, config)
    batch = families.family_module(family).generate(count, seed, config)
    sides = np.maximum(
        batch.bboxes[:, 2] - batch.bboxes[:, 0], batch.bboxes[:, 3] - batch.bboxes[:, 1]
    )
    return points, scales, sides, batch.keypoints[..., 2] > 0


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
