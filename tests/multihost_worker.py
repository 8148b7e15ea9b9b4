"""One process of a data-parallel GANgealing run: two train steps of a tiny setup, params to .npz.

    python tests/multihost_worker.py OUT.npz --batch 8 [--coordinator 127.0.0.1:PORT
        --num-processes 2 --process-id I] [--devices N]

Without --coordinator the process runs alone on its first N local devices (default: all of them).
With it, the process joins a jax.distributed run over CPU collectives (gloo) and the mesh spans
every device of every process. The device count per process comes from XLA_FLAGS
(--xla_force_host_platform_device_count), set by whoever starts this script.
"""

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

STEPS = 2


def _parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--coordinator", default="")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--devices", type=int, default=0, help="0 = every device")
    parser.add_argument("--cache-dir", default="", help="persistent compilation cache")
    return parser.parse_args(argv)


def _tiny_run(batch: int):
    """The generator, STN, optimizer, settings, state and frozen inputs of a 16x16 run."""
    from gangealing_jax.losses.gangealing import Frozen, ObjectiveSettings
    from gangealing_jax.models.stn import STN
    from gangealing_jax.models.stylegan2 import Generator, GeneratorConfig
    from gangealing_jax.training.gangealing_step import (
        OptimizerSettings,
        StepSettings,
        init_state,
        make_optimizer,
    )
    from tests.tiny_models import tiny_stn_config

    # Jitted inits: eager Flax init dispatches op by op and costs more than the steps.
    generator = Generator(GeneratorConfig(size=16, style_dim=16, n_mlp=2, channels=(8,) * 3))
    gvars = jax.jit(lambda k: generator.init(k, jnp.zeros((1, 16)), noise_mode="const"))(
        jax.random.PRNGKey(0)
    )
    stn = STN(tiny_stn_config(flow_size=16, supersize=16))
    stn_vars = jax.jit(stn.init)(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))
    dim = generator.config.style_dim
    frozen = Frozen(gvars, jnp.eye(2, dim), jnp.zeros((1, dim)))
    params = {"stn": stn_vars, "congealing": {"coefficients": jnp.full((1, 2), 0.1)}}
    opt_settings = OptimizerSettings(anneal_psi=4, period=2.0)
    optimizer = make_optimizer(opt_settings)
    settings = StepSettings(ObjectiveSettings(inject=3, tv_weight=10.0), batch=batch, anneal_psi=4)
    state = init_state(params, optimizer, jax.random.PRNGKey(7))
    return generator, stn, optimizer, settings, opt_settings, state, frozen


def _host_copy(tree):
    """A replicated (possibly multi-process) pytree -> numpy, from this process's first shard."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)


def main(argv=None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    jax.config.update("jax_default_matmul_precision", "highest")
    jax.config.update("jax_disable_most_optimizations", True)
    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=60,
        )
    from gangealing_jax.losses.perceptual import multiscale_structural_distance
    from gangealing_jax.training.gangealing_step import make_train_step
    from gangealing_jax.training.parallel import make_mesh, replicate

    devices = jax.devices()
    mesh = make_mesh(devices[: args.devices] if args.devices else devices)
    generator, stn, optimizer, settings, opt_settings, state, frozen = _tiny_run(args.batch)
    distance = jax.tree_util.Partial(multiscale_structural_distance)
    state, frozen = replicate(state, mesh), replicate(frozen, mesh)
    step = make_train_step(generator, stn, optimizer, settings, opt_settings, mesh)
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, frozen, distance)
        losses.append(float(_host_copy(metrics["loss"])))
    leaves = jax.tree_util.tree_leaves_with_path(_host_copy(state.params))
    arrays = {jax.tree_util.keystr(path): leaf for path, leaf in leaves}
    np.savez(
        args.out,
        losses=np.asarray(losses),
        global_devices=np.asarray(mesh.devices.size),
        process_count=np.asarray(jax.process_count()),
        **{f"param:{name}": value for name, value in arrays.items()},
    )
    if args.coordinator:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
