"""The learned-directions run: setup, the sharded loop with checkpoints and logs, the export.

The run writes into its work directory `config.json`, `metrics.jsonl` and TensorBoard events,
orbax checkpoints (rerunning resumes from the latest: step, both parts, Adam states and the RNG
key), `final_metrics.json` and `directions.npz` (the explorer's and `congealing.basis`' format).
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from gangealing_jax import atomic
from gangealing_jax.errors import ConfigError
from gangealing_jax.models.direction_discovery import (
    CONSTRAINTS,
    Reconstructor,
    ReconstructorConfig,
)
from gangealing_jax.models.stylegan2 import Generator
from gangealing_jax.training.checkpoints import CheckpointManager, TerminationRequest
from gangealing_jax.training.directions import (
    Directions,
    parse_layers,
    sample_w,
    save_directions,
    spread,
)
from gangealing_jax.training.gangealing_setup import load_frozen_generator
from gangealing_jax.training.learned_directions import (
    DiscoverySettings,
    FrozenGenerator,
    directions_of,
    init_state,
    make_optimizer,
    make_train_step,
)
from gangealing_jax.training.metrics_log import MetricsWriter, check_finite
from gangealing_jax.training.parallel import check_batch_size, make_mesh, replicate


class DiscoveryRun(NamedTuple):
    generator: Generator
    reconstructor: Reconstructor
    settings: DiscoverySettings
    frozen: FrozenGenerator
    samples: np.ndarray  # (num_w_samples, D) mapped w: W's spread and the exported stds
    optimizer: object


def _check(config) -> None:
    def fail(field, problem):
        raise ConfigError(f"--config.{field}={config[field]!r}: {problem}")

    for field in ("num_directions", "iters", "batch", "log_every", "ckpt_every", "num_w_samples"):
        if not isinstance(config[field], int) or config[field] < 1:
            fail(field, "must be an integer >= 1")
    if config.constraint not in CONSTRAINTS:
        fail("constraint", f"choose one of {', '.join(CONSTRAINTS)}")
    if not 0 <= config.min_shift < config.shift_scale:
        fail("min_shift", f"must lie in [0, shift_scale={config.shift_scale})")
    for field in ("lr", "directions_lr"):
        if not config[field] > 0:
            fail(field, "must be > 0")


def setup_run(config) -> tuple[DiscoveryRun, object]:
    """(DiscoveryRun, fresh state) named by a `configs/directions` config."""
    _check(config)
    g_key, w_key, init_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    gconfig, gvars = load_frozen_generator(config.generator, g_key)
    generator = Generator(gconfig)
    if config.constraint == "orthonormal" and config.num_directions > gconfig.style_dim:
        raise ConfigError(
            f"--config.num_directions={config.num_directions}: at most {gconfig.style_dim} "
            "orthonormal directions fit in this W; lower it or use --config.constraint=unit"
        )
    settings = DiscoverySettings(
        num_directions=config.num_directions,
        constraint=config.constraint,
        layers=parse_layers(config.layers, gconfig.n_latent),
        batch=config.batch,
        shift_scale=float(config.shift_scale),
        min_shift=float(config.min_shift),
        shift_weight=float(config.shift_weight),
        lr=float(config.lr),
        directions_lr=float(config.directions_lr),
    )
    rc = config.reconstructor
    reconstructor = Reconstructor(
        ReconstructorConfig(config.num_directions, int(rc.size), int(rc.width), int(rc.depth))
    )
    samples = sample_w(generator, gvars, w_key, config.num_w_samples)
    w_scale = jnp.float32(np.sqrt(samples.var(axis=0).mean()))
    optimizer = make_optimizer(settings)
    state = init_state(generator, settings, reconstructor.config, optimizer, init_key)
    frozen = FrozenGenerator(gvars, w_scale)
    return DiscoveryRun(generator, reconstructor, settings, frozen, samples, optimizer), state


def export_directions(path, run: DiscoveryRun, params) -> Directions:
    """Write the learned directions, ranked as GANSpace ranks its own: by the variance of mapped
    w along each (the score), largest first. Training gives them no order, and a consumer that
    takes the first few (`congealing.basis` with ndirs < K) should get those W varies most along.
    The checkpoint keeps the reconstructor's own class order."""
    vectors = np.asarray(directions_of(jax.device_get(params), run.generator, run.settings))
    std = spread(vectors, run.samples)
    order = np.argsort(-std, kind="stable")
    found = Directions(
        vectors[order].astype(np.float32),
        std[order].astype(np.float32),
        run.samples.mean(axis=0).astype(np.float32),
        "learned",
        run.settings.layers,
        np.square(std[order]).astype(np.float32),
    )
    save_directions(path, found)
    return found


class DiscoveryResult(NamedTuple):
    step: int
    interrupted: bool
    metrics: dict
    directions_path: pathlib.Path


def train_directions(config, workdir) -> DiscoveryResult:
    """Trains (or resumes) the run in `workdir`; exports workdir/directions.npz."""
    run, fresh = setup_run(config)
    devices = jax.devices()
    mesh = make_mesh(devices[: config.num_devices] if config.num_devices else devices)
    check_batch_size(config.batch, mesh)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    primary = jax.process_index() == 0
    if primary:
        atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
    ckpts = CheckpointManager(
        workdir / "checkpoints", save_every=config.ckpt_every, keep=config.keep_checkpoints
    )
    state = replicate(ckpts.restore_latest(fresh), mesh)
    frozen = replicate(run.frozen, mesh)
    step_fn = make_train_step(run.generator, run.reconstructor, run.optimizer, run.settings, mesh)
    start = int(state.step)
    writer = MetricsWriter(workdir, enabled=primary, last_step=start)
    bar = tqdm(
        range(start, config.iters),
        initial=start,
        total=config.iters,
        disable=not (primary and config.progress),
    )
    metrics, interrupted = {}, False
    with TerminationRequest() as stop:
        for index in bar:
            state, device_metrics = step_fn(state, frozen)
            it = index + 1
            must_save = it % config.ckpt_every == 0 or it == config.iters
            if it % config.log_every == 0 or must_save or stop.requested:
                metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
                check_finite(metrics, it, ckpts.directory)
                writer.scalars(it, metrics)
                bar.set_description(
                    f"cross entropy {metrics['cross_entropy']:.3f} accuracy "
                    f"{metrics['accuracy']:.3f} shift error {metrics['shift_error']:.3f}"
                )
            if must_save or stop.requested:
                ckpts.save(it, state, force=True)
            if stop.requested:
                interrupted = True
                break
    ckpts.close()
    writer.close()
    path = workdir / "directions.npz"
    if primary:
        export_directions(path, run, state.params)
        atomic.write_json(workdir / "final_metrics.json", metrics, indent=2)
    return DiscoveryResult(int(state.step), interrupted, metrics, path)
