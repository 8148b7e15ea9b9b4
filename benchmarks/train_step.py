"""GANgealing train-step throughput on configs/bench_small.py: steps/s, images/s, FLOP/s, memory.

python -m benchmarks.train_step [--batches 8,40] [--devices 1,2,4,8] [--iters 3] [--full]

Single-device cases run in this process; the scaling cases (a fixed global batch over 1..8 fake
CPU devices) run in subprocesses, since the device count is fixed when jax starts. LPIPS uses
random VGG weights (speed does not depend on their values). Every step starts at iteration
anneal_psi / 2, i.e. psi ~= 0.5. --full times the reference architecture (256x256 generator with
the reference channel table, STN at flow 128 over 256x256 inputs with channel multiplier 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks.common import device_summary, emit, flops_of, timed_calls
from benchmarks.perceptual import random_lpips_weights
from configs import bench_small
from gangealing_jax.losses.perceptual import lpips_distance

REPO = pathlib.Path(__file__).resolve().parent.parent


def bench_config(full: bool, batch: int):
    c = bench_small.get_config()
    c.batch = batch
    if full:
        c.generator.random_size = 256
        c.generator.random_style_dim = 512
        c.stn.flow_size = 128
        c.stn.channels = ()  # the reference table, scaled by channel_multiplier 0.5
        c.real_size = 256
    return c


def build(config, full: bool, key):
    """(generator, stn, optimizer, step settings, optimizer settings, frozen, distance, state)."""
    from gangealing_jax.losses.gangealing import Frozen
    from gangealing_jax.models.stn import STN
    from gangealing_jax.models.stylegan2 import Generator, GeneratorConfig
    from gangealing_jax.training.gangealing_setup import settings_from_config, stn_config
    from gangealing_jax.training.gangealing_step import init_state, make_optimizer
    from gangealing_jax.training.latent_init import init_congealing

    g = config.generator
    channels = () if full else (g.random_channels,) * (g.random_size.bit_length() - 2)
    gconfig = GeneratorConfig(g.random_size, g.random_style_dim, g.random_n_mlp, channels)
    generator = Generator(gconfig)
    g_key, stn_key, pca_key, run_key = jax.random.split(key, 4)
    gvars = jax.jit(
        lambda k: generator.init(k, jnp.zeros((1, gconfig.style_dim)), noise_mode="const")
    )(g_key)
    stn = STN(stn_config(config))
    flow = config.stn.flow_size
    stn_vars = jax.jit(stn.init)(stn_key, jnp.zeros((1, flow, flow, 3)))
    init = init_congealing(
        generator, gvars, pca_key, ndirs=config.ndirs, num_heads=config.num_heads,
        num_pca_samples=config.num_pca_samples, inject_index=config.inject,
    )  # fmt: skip
    step_settings, optimizer_settings = settings_from_config(config)
    optimizer = make_optimizer(optimizer_settings)
    frozen = Frozen(gvars, jnp.asarray(init.directions), jnp.asarray(init.lat_mean))
    params = {"stn": stn_vars, "congealing": {"coefficients": jnp.asarray(init.coefficients)}}
    state = init_state(params, optimizer, run_key)
    state = state.replace(step=jnp.asarray(config.anneal_psi // 2, jnp.int32))
    distance = jax.tree_util.Partial(lpips_distance, random_lpips_weights())
    return generator, stn, optimizer, step_settings, optimizer_settings, frozen, distance, state


def peak_memory() -> dict:
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return {"peak_device_bytes": int(stats["peak_bytes_in_use"])}
    # Linux reports ru_maxrss in KiB.
    return {"process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_case(batch: int, num_devices: int, iters: int, full: bool) -> dict:
    from gangealing_jax.training.gangealing_step import make_train_step, with_passes
    from gangealing_jax.training.parallel import make_mesh, replicate

    config = bench_config(full, batch)
    mesh = make_mesh(jax.devices()[:num_devices])
    generator, stn, optimizer, settings, opt_settings, frozen, distance, state = build(
        config, full, jax.random.PRNGKey(0)
    )
    state, frozen, distance = (replicate(x, mesh) for x in (state, frozen, distance))
    step = make_train_step(generator, stn, optimizer, settings, opt_settings, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, distance).compile()
    compile_s = time.perf_counter() - start
    flops = flops_of(compiled)
    state, metrics = compiled(state, frozen, distance)  # warm-up
    jax.block_until_ready(state)
    holder = [state, metrics]

    def one_step():  # the state is donated: each call consumes the previous one's output
        holder[:] = compiled(holder[0], frozen, distance)
        jax.block_until_ready(holder[0])

    cpu_start = time.process_time()
    per_step = timed_calls(one_step, min_iters=iters)
    cpu_per_step = (time.process_time() - cpu_start) / iters
    state, metrics = holder
    record = {
        "benchmark": "train_step",
        "arch": "reference" if full else "bench_small",
        "batch": batch,
        "mesh_devices": num_devices,
        # forward/backward passes the step takes its batch in (training/passes.py)
        "passes_per_step": with_passes(settings, stn, mesh).grad_accum,
        "psi": round(float(metrics["psi"]), 4),
        "steps_per_s": 1.0 / per_step,  # medians over the timed steps
        "images_per_s": batch / per_step,
        # CPU time of all threads per step: on a shared machine, less disturbed than wall time.
        "process_cpu_s_per_step": cpu_per_step,
        "compile_s": compile_s,
        "flops_per_step": flops,
        "flops_per_s": flops / per_step if flops else None,
        **peak_memory(),
        **device_summary(),
    }
    try:
        temp = compiled.memory_analysis().temp_size_in_bytes
        record["compiled_temp_bytes"] = int(temp)
    except Exception:  # not every backend reports it
        pass
    return record


def run_scaling(devices: list[int], batch: int, iters: int, full: bool) -> None:
    for count in devices:
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "benchmarks.train_step", "--worker", f"--batches={batch}",
                   f"--devices={count}", f"--iters={iters}"] + (["--full"] if full else [])  # fmt: skip
        out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                record["scaling"] = True
                emit(record)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="8,40", help="single-device global batches")
    parser.add_argument("--devices", default="1,2,4,8", help="fake CPU device counts to scale over")
    parser.add_argument("--scaling-batch", type=int, default=16, help=">= 2 images per device")
    parser.add_argument(
        "--iters", type=int, default=3, help="timed steps after the warm-up (median)"
    )
    parser.add_argument("--full", action="store_true", help="the reference architecture")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b]
    devices = [int(d) for d in args.devices.split(",") if d]
    if args.worker:  # one scaling case in a process started with its device count
        emit(run_case(batches[0], devices[0], args.iters, args.full))
        return
    for batch in batches:
        emit(run_case(batch, 1, args.iters, args.full))
    if jax.default_backend() == "cpu" and devices:
        run_scaling(devices, args.scaling_batch, args.iters, args.full)


if __name__ == "__main__":
    main()
