"""Spatial-transformer throughput: congealed images/s and achieved FLOP/s.

The reference architecture (similarity + flow, flow_size 128, 256x256 inputs, reference channel
table with channel_multiplier 0.5), randomly initialised, with and without flip inference
(which runs every image twice).

python -m benchmarks.stn [--batches 8,64] [--output-resolution 256] [--seconds 2] [--quick]

--output-resolution samples the congealed image at that size from the full-resolution input (the
reference's `--output_resolution`); by default it is the flow size.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import device_summary, emit, time_compiled
from gangealing_jax.apps.points import forward_with_flip
from gangealing_jax.models.stn import STN, STNConfig


def run(
    config: STNConfig, batch: int, flips: bool, seconds: float, min_iters: int, seed: int,
    output_resolution: int | None = None,
):  # fmt: skip
    stn = STN(config)
    key_init, key_images = jax.random.split(jax.random.PRNGKey(seed))
    size = config.supersize
    images = jax.random.uniform(key_images, (batch, size, size, 3), minval=-1.0, maxval=1.0)
    variables = jax.jit(stn.init)(key_init, images[:1])

    if flips:

        def congeal(variables, images):
            return forward_with_flip(
                stn, variables, images, padding_mode="border", output_resolution=output_resolution
            ).image

    else:

        def congeal(variables, images):
            return stn.apply(
                variables, images, padding_mode="border", output_resolution=output_resolution
            ).image

    per_call, compile_s, flops = time_compiled(
        congeal, (variables, images), min_seconds=seconds, min_iters=min_iters
    )
    return {
        "benchmark": "stn",
        "transforms": list(config.transforms),
        "flow_size": config.flow_size,
        "input_size": size,
        "output_resolution": output_resolution or config.flow_size,
        "batch": batch,
        "flip_inference": flips,
        "images_per_s": batch / per_call,
        "ms_per_batch": per_call * 1e3,
        "compile_s": compile_s,
        "gflop_per_batch": flops / 1e9 if flops else None,
        "achieved_gflop_per_s": flops / per_call / 1e9 if flops else None,
        **device_summary(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default=None, help="comma-separated (default 8,64; quick: 8)")
    parser.add_argument("--flow-size", type=int, default=128)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument(
        "--output-resolution", type=int, default=None, help="congealed image size (default: flow)"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="batch 8 only and one timed call per case (a 2-core CPU finishes in about 5 minutes)",
    )
    args = parser.parse_args()
    config = STNConfig(flow_size=args.flow_size, supersize=args.input_size)
    seconds, min_iters = (0.0, 1) if args.quick else (args.seconds, 3)
    batches = args.batches or ("8" if args.quick else "8,64")
    for batch in (int(b) for b in batches.split(",")):
        for flips in (False, True):
            emit(run(config, batch, flips, seconds, min_iters, args.seed, args.output_resolution))


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    main()
