"""Generator throughput: images/s for mapping + synthesis, and achieved FLOP/s.

python benchmarks/generator.py [--sizes 32,64,256] [--batch 8] [--seconds 2]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import device_summary, emit, time_compiled
from gangealing_jax.models.stylegan2 import Generator, GeneratorConfig


def run(size: int, batch: int, seconds: float, style_dim: int, n_mlp: int) -> dict:
    config = GeneratorConfig(size=size, style_dim=style_dim, n_mlp=n_mlp)  # reference channels
    generator = Generator(config)
    key = jax.random.PRNGKey(0)
    z = jax.random.normal(key, (batch, style_dim))
    variables = jax.jit(lambda k: generator.init(k, z[:1], noise_mode="const"))(key)

    def forward(variables, z, noise_key):
        return generator.apply(variables, z, rngs={"noise": noise_key})

    per_call, compile_s, flops = time_compiled(forward, (variables, z, key), min_seconds=seconds)
    return {
        "benchmark": "generator",
        "size": size,
        "batch": batch,
        "style_dim": style_dim,
        "channels": list(config.channels),
        "images_per_s": batch / per_call,
        "ms_per_batch": per_call * 1e3,
        "compile_s": compile_s,
        "gflop_per_batch": flops / 1e9 if flops else None,
        "achieved_gflop_per_s": flops / per_call / 1e9 if flops else None,
        **device_summary(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="32,64,256")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--style-dim", type=int, default=512)
    parser.add_argument("--n-mlp", type=int, default=8)
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        emit(run(size, args.batch, args.seconds, args.style_dim, args.n_mlp))


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    main()
