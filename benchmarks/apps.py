"""Application throughput: video edit propagation frames/s and PCK-Transfer pairs/s.

python -m benchmarks.apps [--sizes 256,1024] [--batch 4] [--repeats 3] [--flow-size 64]
    [--channels 32] [--pck-size 256] [--pck-batch 8] [--full]

Video: the per-chunk work of `apps.video.propagate_video` (`apps.propagate.make_propagator`):
uint8 frames in, congeal at the edit's resolution, carry the edit's points back into every frame
(uncongeal), splat their colours and alphas, blend over the frame, uint8 frames and points out.
The edit is an opaque disc of colour covering --edit-fraction of a square edit at the frame's
resolution (or --edit-resolution). PCK: `apps.pck.transfer_batch` on random pairs with keypoints,
plain and with flip matching (which runs all four mirror combinations).

The STN (similarity + flow) is randomly initialised, which needs no downloads; speed does not
depend on the weights' values. The default STN is small (flow 64, 32 channels) so that a 2-core
CPU finishes in a minute or two; --full uses the reference architecture (flow 128, reference
channel table with multiplier 0.5).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import device_summary, emit, time_compiled
from gangealing_jax.apps import pck
from gangealing_jax.apps.model import DEFAULT_TEST_TIME, AlignmentModel
from gangealing_jax.apps.propagate import edit_points, make_propagator
from gangealing_jax.models.stn import STN, STNConfig


def random_model(flow_size: int, channels: int | None, seed: int = 0) -> AlignmentModel:
    table = () if channels is None else tuple((2**i, channels) for i in range(11))
    config = STNConfig(flow_size=flow_size, supersize=flow_size, channels=table)
    stn = STN(config)
    dummy = jnp.zeros((1, flow_size, flow_size, 3))
    variables = jax.jit(stn.init)(jax.random.PRNGKey(seed), dummy)
    return AlignmentModel(stn, variables, dict(DEFAULT_TEST_TIME), "random")


def disc_edit(resolution: int, fraction: float) -> np.ndarray:
    """(R, R, 4) uint8: an opaque orange disc covering `fraction` of the edit, centred."""
    radius = np.sqrt(fraction / np.pi) * resolution
    y, x = np.mgrid[0:resolution, 0:resolution] - (resolution - 1) / 2
    edit = np.zeros((resolution, resolution, 4), np.uint8)
    edit[x**2 + y**2 <= radius**2] = (255, 128, 0, 255)
    return edit


def video_case(model, size: int, args) -> dict:
    rng = np.random.default_rng(args.seed)
    frames = rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
    edit = edit_points(disc_edit(args.edit_resolution or size, args.edit_fraction))
    propagator = make_propagator(model, edit, blend=args.blend, batch_size=args.batch)
    start = time.perf_counter()
    propagator(frames)  # compiles; the outputs come back to the host as numpy arrays
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.repeats):
        propagator(frames)
    per_batch = (time.perf_counter() - start) / args.repeats
    return {
        "benchmark": "apps",
        "case": "video_propagation",
        "frame_size": size,
        "edit_resolution": edit.resolution,
        "edit_points": len(edit.pixels),
        "blend": args.blend,
        "batch": propagator.batch_size,
        "frames_per_s": propagator.batch_size / per_batch,
        "ms_per_batch": per_batch * 1e3,
        "compile_s": compile_s,
        **stn_summary(model),
        **device_summary(),
    }


def pck_case(model, flips: bool, args) -> dict:
    size, batch, num_points = args.pck_size, args.pck_batch, 15
    rng = np.random.default_rng(args.seed)
    images_a, images_b = rng.integers(0, 256, (2, batch, size, size, 3), dtype=np.uint8)
    xy = rng.uniform(0, size - 1, (2, batch, num_points, 2))
    points_a, points_b = np.concatenate([xy, np.ones((2, batch, num_points, 1))], -1)
    permutation = rng.permutation(num_points)
    model = model._replace(test_time=dict(model.test_time, flips=flips))

    def transfer(weights, a, b, pa, pb):
        return pck.transfer_batch(model.with_weights(weights), a, b, pa, pb, permutation)

    arrays = (model.weights, images_a, images_b, points_a, points_b)
    per_call, compile_s, flops = time_compiled(
        transfer, arrays, min_seconds=0.0, min_iters=args.repeats
    )
    return {
        "benchmark": "apps",
        "case": "pck_transfer",
        "image_size": size,
        "flip_matching": flips,
        "batch": batch,
        "keypoints": num_points,
        "pairs_per_s": batch / per_call,
        "ms_per_batch": per_call * 1e3,
        "compile_s": compile_s,
        "gflop_per_batch": flops / 1e9 if flops else None,
        **stn_summary(model),
        **device_summary(),
    }


def stn_summary(model: AlignmentModel) -> dict:
    config = model.stn.config
    return {
        "transforms": list(config.transforms),
        "flow_size": config.flow_size,
        "stn_channels_at_flow": config.channel_table[config.flow_size],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--sizes", default="256,1024", help="video frame sides (comma-separated)")
    add("--batch", type=int, default=4, help="frames per propagation batch")
    add("--repeats", type=int, default=3, help="timed batches after the compiling one")
    add("--flow-size", type=int, default=64)
    add("--channels", type=int, default=32, help="STN channels at every resolution")
    add("--full", action="store_true", help="flow 128 and the reference channel table")
    add("--edit-resolution", type=int, default=None, help="default: the frame side")
    add("--edit-fraction", type=float, default=0.05, help="share of the edit that is painted")
    add("--blend", choices=("alpha", "laplacian", "laplacian_light"), default="alpha")
    add("--pck-size", type=int, default=256, help="PCK image side (0: skip PCK)")
    add("--pck-batch", type=int, default=8, help="pairs per PCK batch")
    add("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.full:
        model = random_model(128, None, args.seed)
    else:
        model = random_model(args.flow_size, args.channels, args.seed)
    for size in (int(s) for s in args.sizes.split(",") if s):
        emit(video_case(model, size, args))
    if args.pck_size:
        for flips in (False, True):
            emit(pck_case(model, flips, args))


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    main()
