"""StyleGAN2 trainer iterations per second, with and without GGDR, timed back to back.

python -m benchmarks.gan_step [--config configs/gan/procedural.py] [--ggdr-weights 0,10]
    [--cycles 3]

One timed call is one cycle of `d_reg_every` iterations (16 by default: one R1 step, a
path-length step every `g_reg_every`), so the lazy regularisers are paid in the proportion a
run pays them; the record is the median cycle over `--cycles` calls, divided into iterations.
The cases run in one process, one after the other, on random uint8 images of the config's size,
and the last record gives each case's cost against the first.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import jax
import numpy as np

from benchmarks.common import device_summary, emit, timed_calls
from gangealing_jax.training import gan_iteration, gan_loop, parallel


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("gan_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def time_case(config, ggdr_weight: float, cycles: int) -> dict:
    config = config.copy_and_resolve_references()
    config.ggdr_weight = ggdr_weight
    mesh = parallel.make_mesh()
    setup = gan_loop.build_setup(config, mesh)
    steps = gan_iteration.make_steps(setup)
    state = gan_loop.init_replicated(setup, jax.random.PRNGKey(config.seed))
    res = config.model.resolution
    images = np.random.default_rng(0).integers(0, 256, (config.batch, res, res, 3), np.uint8)
    real = parallel.shard_batch(images, mesh)
    period = config.d_reg_every
    step = [0]

    def cycle():
        nonlocal state
        for _ in range(period):
            state, metrics = gan_iteration.train_iteration(steps, setup, state, real, step[0])
            step[0] += 1
        jax.block_until_ready((state, metrics))

    start = time.perf_counter()
    cycle()  # compiles every step function (R1 and path-length iterations included)
    warmup_s = time.perf_counter() - start
    per_cycle = timed_calls(cycle, min_iters=cycles)
    return {
        "benchmark": "gan_step",
        "ggdr_weight": ggdr_weight,
        "ggdr_resolution": int(config.ggdr_resolution) if ggdr_weight > 0 else None,
        "resolution": res,
        "batch": config.batch,
        "iterations_per_s": period / per_cycle,
        "images_per_s": period * config.batch / per_cycle,
        "first_cycle_s": warmup_s,
        **device_summary(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/gan/procedural.py")
    parser.add_argument("--ggdr-weights", default="0,10", help="comma-separated; 0 = off")
    parser.add_argument("--cycles", type=int, default=3, help="timed cycles per case")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    records = [time_case(config, float(w), args.cycles) for w in args.ggdr_weights.split(",")]
    for record in records:
        emit(record)
    base = records[0]["iterations_per_s"]
    emit({
        "benchmark": "gan_step/relative_cost",
        "against_ggdr_weight": records[0]["ggdr_weight"],
        "seconds_per_iteration_ratio": {
            str(r["ggdr_weight"]): base / r["iterations_per_s"] for r in records
        },
    })  # fmt: skip


if __name__ == "__main__":
    main()
