"""Perceptual-loss throughput: pairs/s forward and forward+backward (gradient w.r.t. x).

python -m benchmarks.perceptual [--size 128] [--batch 8] [--seconds 2] [--losses lpips,...]

LPIPS runs the full VGG16 with random weights (speed does not depend on their values); the weights
are passed as a jit argument, as a train step that receives the loss as an argument would.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import device_summary, emit, time_compiled
from gangealing_jax.losses import perceptual
from gangealing_jax.models.vgg import VGG16_STAGES, conv_name


def random_lpips_weights(seed: int = 0, stages=VGG16_STAGES) -> perceptual.PerceptualWeights:
    """VGG16 (full size, or the conv widths `stages`) + heads, drawn with numpy (no init graph
    to compile)."""
    rng = np.random.default_rng(seed)
    params, cin = {}, 3
    for stage, widths in enumerate(stages):
        for index, width in enumerate(widths):
            kernel = rng.standard_normal((3, 3, cin, width), np.float32) * np.sqrt(2 / (9 * cin))
            params[conv_name(stage, index)] = {
                "kernel": jnp.asarray(kernel),
                "bias": jnp.zeros((width,), jnp.float32),
            }
            cin = width
    heads = tuple(jnp.asarray(rng.uniform(0, 0.1, w[-1]), jnp.float32) for w in stages)
    shift = jnp.asarray(perceptual.LPIPS_SHIFT, jnp.float32)
    scale = jnp.asarray(perceptual.LPIPS_SCALE, jnp.float32)
    return perceptual.PerceptualWeights(params, heads, shift, scale)


def make_loss(name: str):
    if name == "lpips":
        return jax.tree_util.Partial(perceptual.lpips_distance, random_lpips_weights())
    if name == "multiscale_structural":
        return jax.tree_util.Partial(perceptual.multiscale_structural_distance)
    raise ValueError(f"no benchmark for loss '{name}'")


def run(name: str, mode: str, size: int, batch: int, seconds: float) -> dict:
    loss = make_loss(name)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
    y = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
    if mode == "forward":
        fn = lambda loss, x, y: loss(x, y)
    else:
        fn = jax.value_and_grad(lambda loss, x, y: loss(x, y).mean(), argnums=1)
    per_call, compile_s, flops = time_compiled(fn, (loss, x, y), min_seconds=seconds, min_iters=1)
    return {
        "benchmark": "perceptual",
        "loss": name,
        "mode": mode,
        "size": size,
        "batch": batch,
        "pairs_per_s": batch / per_call,
        "ms_per_batch": per_call * 1e3,
        "compile_s": compile_s,
        "gflop_per_batch": flops / 1e9 if flops else None,
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        **device_summary(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--losses", default="lpips,multiscale_structural")
    args = parser.parse_args()
    for name in args.losses.split(","):
        for mode in ("forward", "forward_backward"):
            emit(run(name, mode, args.size, args.batch, args.seconds))


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    main()
