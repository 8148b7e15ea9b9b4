"""One command for whatever device is present: the GANgealing step under each numerics policy.

python -m benchmarks.accelerator [--arch reference|bench_small|tiny] [--batch 40] [--grad-accum 1]
python -m benchmarks.accelerator --tiny       # CPU smoke run: tiny models, under a minute

For each mode (float32-highest, float32-default, bfloat16; --tiny: float32-highest and bfloat16)
it prints one JSON line: images/s (median over timed steps), compile seconds, the compiled step's
memory, achieved FLOP/s and the fraction of the device's peak (table below; None where the device
is not in it), and the relative deviation of every objective term and of the gradients from
float32-highest, on the same z, noise and parameters. Then the STN forward with flip inference
(batch 64) and the generator (batch 64) in every mode. LPIPS uses random VGG weights: speed and
rounding do not depend on their values. `--arch reference` is the reference architecture
(generator 256, STN similarity + flow 128 over 256 inputs, channel multiplier 0.5); the step then
starts at psi ~= 0.5, as benchmarks.train_step's does.

`--tiny` times the step in float32-highest only: the other modes' lines hold their deviations,
which is what differs between modes on the CPU, and each mode's step would cost another
compilation (most of the run's time; bfloat16's twice float32's on XLA:CPU).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import device_summary, emit, flops_of, timed_calls
from benchmarks.perceptual import random_lpips_weights
from benchmarks.train_step import bench_config, build, peak_memory
from gangealing_jax.apps.points import forward_with_flip
from gangealing_jax.losses.gangealing import gangealing_objective
from gangealing_jax.losses.perceptual import lpips_distance
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stylegan2 import Generator
from gangealing_jax.ops.precision import Policy
from gangealing_jax.training.gangealing_step import (
    _per_device_gradients,
    make_train_step,
    step_inputs,
)

MODES = {
    "float32-highest": Policy("float32", "highest"),
    "float32-default": Policy("float32", "default"),
    "bfloat16": Policy("bfloat16", "default"),
}
# Dense peak TFLOP/s by device kind (vendor data sheets, no sparsity): bfloat16, TF32 (the GPU
# default for float32 matmuls), plain float32. TPUs multiply in bfloat16 passes only.
PEAK_TFLOPS = {
    "H200": (989.0, 494.5, 67.0),
    "H100": (989.0, 494.5, 67.0),
    "A100": (312.0, 156.0, 19.5),
    "L4": (121.0, 60.0, 30.3),
    "TPU v4": (275.0, None, None),
    "TPU v5 lite": (197.0, None, None),  # v5e
    "TPU v5e": (197.0, None, None),
    "TPU v5p": (459.0, None, None),
    "TPU v5": (459.0, None, None),
    "TPU v6 lite": (918.0, None, None),  # v6e
    "TPU v6e": (918.0, None, None),
}
TINY_VGG = ((8, 8), (8, 8), (8, 8, 8), (8, 8, 8), (8, 8, 8))


def peak_flops(mode: str) -> float | None:
    kind = jax.devices()[0].device_kind
    match = next((k for k in sorted(PEAK_TFLOPS, key=len, reverse=True) if k in kind), None)
    if match is None:
        return None
    bf16, tf32, fp32 = PEAK_TFLOPS[match]
    tflops = {"bfloat16": bf16, "float32-default": tf32 or bf16, "float32-highest": fp32}[mode]
    return tflops * 1e12 if tflops else None


def arch_config(arch: str, batch: int, grad_accum: int):
    config = bench_config(arch == "reference", batch)
    config.grad_accum = grad_accum
    if arch == "tiny":
        config.generator.random_size = 16
        config.generator.random_style_dim = 32
        config.generator.random_n_mlp = 2
        config.generator.random_channels = 16
        config.num_pca_samples = 1_000
        config.stn.flow_size = 16
        config.stn.channels = tuple((2**i, 16) for i in range(11))
        config.real_size = 16
    return config


def with_policy(parts, policy: Policy, tiny: bool):
    generator, stn, optimizer, settings, opt_settings, frozen, distance, state = parts
    weights = random_lpips_weights(stages=TINY_VGG) if tiny else distance.args[0]
    return (
        Generator(generator.config, policy=policy),
        STN(stn.config, policy=policy),
        optimizer, settings, opt_settings, frozen,
        jax.tree_util.Partial(lpips_distance, weights, policy=policy),
        state,
    )  # fmt: skip


def perturb_stn(state, scale: float):
    stn = state.params["stn"]
    leaves, tree = jax.tree.flatten(stn)
    keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return state.replace(params={**state.params, "stn": jax.tree.unflatten(tree, noisy)})


def objective_and_grads(parts):
    """(grads, metrics) of the state's step, computed as the step computes them."""
    generator, stn, _, settings, _, frozen, distance, state = parts
    objective = functools.partial(
        gangealing_objective, generator=generator, stn=stn, settings=settings.objective
    )

    @jax.jit
    def run(state, frozen, distance):
        z, noise, psi, augment = step_inputs(state, generator, stn, settings)
        return _per_device_gradients(
            state.params, frozen, distance, z, noise, psi, augment,
            objective=objective, axis_name=None,
        )  # fmt: skip

    return jax.device_get(run(state, frozen, distance))


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    scale = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else float(np.linalg.norm(a))


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def deviations(result, reference) -> dict:
    """Relative deviation of each objective term and of each parameter group's gradient."""
    grads, metrics = result
    ref_grads, ref_metrics = reference
    out = {f"rel_dev_{k}": _rel(metrics[k], ref_metrics[k]) for k in ref_metrics}
    for group in ("stn", "congealing"):
        out[f"rel_dev_grad_{group}"] = _rel(_flat(grads[group]), _flat(ref_grads[group]))
    return out


def memory_of(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
        return {"compiled_bytes": int(m.temp_size_in_bytes + m.argument_size_in_bytes
                                      + m.output_size_in_bytes)}  # fmt: skip
    except Exception:  # not every backend reports it
        return {}


def time_step(parts, iters: int) -> dict:
    import time

    generator, stn, optimizer, settings, opt_settings, frozen, distance, state = parts
    step = make_train_step(generator, stn, optimizer, settings, opt_settings)
    state = jax.tree.map(jnp.copy, state)  # the step donates it
    start = time.perf_counter()
    compiled = step.lower(state, frozen, distance).compile()
    compile_s = time.perf_counter() - start
    holder = list(compiled(state, frozen, distance))  # warm-up
    jax.block_until_ready(holder)

    def one():
        holder[:] = compiled(holder[0], frozen, distance)
        jax.block_until_ready(holder[0])

    per_step = timed_calls(one, min_iters=iters)
    flops = flops_of(compiled)
    return {
        "images_per_s": settings.batch / per_step,
        "s_per_step": per_step,
        "compile_s": compile_s,
        "flops_per_step": flops,
        "achieved_flops_per_s": flops / per_step if flops else None,
        **memory_of(compiled),
        **peak_memory(),  # the process's peak so far (a device's counter never goes down)
    }


def time_forward(fn, args, iters: int) -> tuple[float, float | None]:
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    return timed_calls(lambda: jax.block_until_ready(compiled(*args)), min_iters=iters), flops_of(
        compiled
    )


def inference_records(parts, mode: str, policy: Policy, batch: int, iters: int):
    generator, stn, *_, state = parts
    stn = STN(stn.config, policy=policy)
    size = stn.config.supersize
    images = jax.random.uniform(jax.random.PRNGKey(1), (batch, size, size, 3), minval=-1.0)
    stn_vars = state.params["stn"]
    congeal = lambda v, x: forward_with_flip(stn, v, x, padding_mode="border").image  # noqa: E731
    generator = Generator(generator.config, policy=policy)
    gvars = parts[5].generator
    z = jax.random.normal(jax.random.PRNGKey(2), (batch, generator.config.style_dim))
    synth = lambda v, z: generator.apply(v, z, noise_mode="const")  # noqa: E731
    for name, fn, args in (
        ("stn_flip", congeal, (stn_vars, images)),
        ("generator", synth, (gvars, z)),
    ):
        per_call, flops = time_forward(fn, args, iters)
        peak = peak_flops(mode)
        achieved = flops / per_call if flops else None
        yield {
            "benchmark": f"accelerator/{name}", "mode": mode, "batch": batch,
            "images_per_s": batch / per_call,
            "achieved_flops_per_s": achieved,
            "utilisation": achieved / peak if achieved and peak else None,
            **device_summary(),
        }  # fmt: skip


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.tiny:
        return run(args)
    # A smoke run: compile time dominates it and its speed means nothing, so skip most of XLA.
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        return run(args)
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU, < 1 minute")
    parser.add_argument("--arch", default="reference", choices=("reference", "bench_small", "tiny"))
    parser.add_argument("--batch", type=int, default=None, help="global batch (default 40; tiny 4)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    parser.add_argument(
        "--modes", default=None, help="comma-separated subset of " + ",".join(MODES)
    )
    parser.add_argument("--iters", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--inference-batch", type=int, default=64)
    parser.add_argument("--no-timing", action="store_true", help="only the deviations")
    parser.add_argument(
        "--perturb-stn", type=float, default=0.0,
        help="add this times N(0, 1) to every STN parameter first: the zero-initialised flow "
        "head otherwise makes the TV and flow-identity terms exactly zero",
    )  # fmt: skip
    return parser.parse_args(argv)


def run(args) -> None:
    arch = "tiny" if args.tiny else args.arch
    tiny = arch == "tiny"
    batch = args.batch or (4 if tiny else 40)
    modes = (args.modes or ("float32-highest,bfloat16" if tiny else ",".join(MODES))).split(",")
    iters = 1 if tiny else args.iters
    parts = build(
        arch_config(arch, batch, args.grad_accum), arch == "reference", jax.random.PRNGKey(0)
    )
    if args.perturb_stn:
        parts = (*parts[:-1], perturb_stn(parts[-1], args.perturb_stn))
    reference = None
    for mode in ["float32-highest"] + [m for m in modes if m != "float32-highest"]:
        policy = MODES[mode]
        mode_parts = with_policy(parts, policy, tiny)
        result = objective_and_grads(mode_parts)
        reference = reference or result
        record = {"benchmark": "accelerator/train_step", "mode": mode, "arch": arch,
                  "batch": batch, "grad_accum": args.grad_accum, **deviations(result, reference)}  # fmt: skip
        if mode in modes and not args.no_timing and (not tiny or mode == "float32-highest"):
            record.update(time_step(mode_parts, iters))
            peak, achieved = peak_flops(mode), record["achieved_flops_per_s"]
            record["utilisation"] = achieved / peak if achieved and peak else None
        record.update(device_summary())
        if mode in modes:
            emit(record)
    if args.no_timing:
        return
    for mode in modes:
        for record in inference_records(
            parts, mode, MODES[mode], 4 if tiny else args.inference_batch, iters
        ):
            emit(record)


if __name__ == "__main__":
    main()
