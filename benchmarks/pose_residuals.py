"""How much of each held-out object's pose a trained similarity STN undoes.

Each procedural face (or butterfly: `--family`) is placed by a known similarity pose (and
mirror), so the STN's matrix composed with the inverse pose is what is left of the pose after
congealing: a constant for a perfect STN (every object lands in one canonical pose). Per parameter (rotation in degrees, log
scale, shift x and y; the pose's shifts in normalised frame units, the residual's in canonical face
units) this prints, as one JSON line each:

- `identity_std`: the spread of the pose itself (what the identity warp leaves);
- `residual_std`: the spread after congealing (0 is perfect);
- `undone_fraction`: the slope of (pose + residual) against the pose (1 = fully undone, 0 = ignored);
- `unexplained_std`: the residual spread that is not a fixed fraction of the pose (noise).

    python -m benchmarks.pose_residuals runs/embedded [--count 300] [--family butterflies]
"""

from __future__ import annotations

import argparse
import json

import jax.numpy as jnp
import numpy as np

from benchmarks.similarity_ceiling import EVAL_SEED
from gangealing_jax.apps.model import load_model, stn_input
from gangealing_jax.data import families, procedural

MIRROR = np.diag([-1.0, 1.0, 1.0])


def pose_matrix(pose: procedural.Pose) -> np.ndarray:
    """(3, 3) canonical -> normalised frame, before the mirror."""
    cos, sin = np.cos(pose.angle), np.sin(pose.angle)
    s = pose.scale
    return np.array([[s * cos, -s * sin, pose.tx], [s * sin, s * cos, pose.ty], [0.0, 0.0, 1.0]])


def residual_and_pose(matrix: np.ndarray, pose: procedural.Pose) -> tuple[np.ndarray, np.ndarray]:
    """(angle deg, log scale, tx, ty) of what the STN left of the pose, and of the pose itself.

    The pose is read as the image shows it (a mirrored face turned by a shows a turn of -a), and
    the residual in the frame of the face the STN can reach (a similarity cannot unmirror, so for
    a mirrored image that is the mirrored canonical face): an STN that undoes a fraction k of
    every pose leaves -(1 - k) times the pose, mirrored or not.
    """
    stn = np.vstack([matrix, [0.0, 0.0, 1.0]])  # congealed -> image
    if pose.flip:
        stn = MIRROR @ stn  # -> the unmirrored image
    left = np.linalg.inv(pose_matrix(pose)) @ stn  # congealed -> canonical
    if pose.flip:
        left = MIRROR @ left  # the mirrored canonical face: no reflection left to read
    residual = [
        np.degrees(np.arctan2(left[1, 0], left[0, 0])),
        np.log(np.hypot(left[0, 0], left[1, 0])),
        left[0, 2],
        left[1, 2],
    ]
    sign = -1.0 if pose.flip else 1.0
    placed = [sign * np.degrees(pose.angle), np.log(pose.scale), sign * pose.tx, pose.ty]
    return np.array(residual), np.array(placed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="exported model directory (a run's workdir or its model/)")
    parser.add_argument("--count", type=int, default=300, help="held-out images rendered")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--family", default="faces", choices=sorted(families.FAMILIES))
    args = parser.parse_args(argv)
    model = load_model(args.model)
    family = families.family_module(args.family)
    config = families.family_config(args.family, resolution=args.resolution, clutter_range=(1, 4))
    scenes = [
        family.sample_scene(procedural.sample_rng(EVAL_SEED, i), config) for i in range(args.count)
    ]
    images = np.stack([family.render_scene(scene, config).image for scene in scenes])
    images = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
    out = model.congeal(stn_input(images, model.flow_size), images)
    if out.matrix is None:
        raise SystemExit(f"{args.model}: the STN has no similarity stage")
    matrices = np.asarray(out.matrix, np.float64).reshape(len(scenes), -1, 2, 3)[:, 0]
    pairs = [residual_and_pose(m, scene.pose) for m, scene in zip(matrices, scenes, strict=True)]
    residual, placed = (np.stack(x) for x in zip(*pairs, strict=True))
    for j, name in enumerate(("rotation_deg", "log_scale", "shift_x", "shift_y")):
        slope, offset = np.polyfit(placed[:, j], residual[:, j], 1)
        print(json.dumps({
            "benchmark": "pose_residuals", "family": args.family, "parameter": name,
            "objects": len(scenes),
            "identity_std": float(placed[:, j].std()), "residual_std": float(residual[:, j].std()),
            "undone_fraction": float(1.0 + slope),
            "unexplained_std": float((residual[:, j] - slope * placed[:, j] - offset).std()),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
