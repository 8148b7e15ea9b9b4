"""The GANgealing training loop: logging, visuals, checkpoints, resume, export.

Rerunning with the same work directory resumes from its latest checkpoint and continues exactly as
an uninterrupted run. SIGTERM (e.g. a TPU preemption) or Ctrl-C saves a checkpoint and returns
cleanly.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from gangealing_jax import atomic
from gangealing_jax.convert.bundle import TRAINED_MODEL_KIND, save_bundle
from gangealing_jax.convert.stn import stn_config_to_dict
from gangealing_jax.convert.stylegan2 import config_to_dict
from gangealing_jax.data.prepared import PreparedDataset
from gangealing_jax.losses.gangealing import gangealing_objective, resize_to_flow
from gangealing_jax.training.checkpoints import CheckpointManager, TerminationRequest
from gangealing_jax.training.collapse import CollapseMonitor
from gangealing_jax.training.config_checks import check_gangealing_config
from gangealing_jax.training.gangealing_setup import RunSetup, build_run
from gangealing_jax.training.gangealing_step import make_train_step
from gangealing_jax.training.metrics_log import MetricsWriter, check_finite
from gangealing_jax.training.parallel import initialize_distributed, make_mesh, replicate
from gangealing_jax.training.schedules import lr_cycle_iters, psi_at_iteration


class RunResult(NamedTuple):
    step: int
    interrupted: bool
    metrics: dict
    model_dir: pathlib.Path
    collapse: dict | None = None  # CollapseMonitor.summary() of this (part of the) run


def visual_batch(setup: RunSetup, state, z: jnp.ndarray, psi):
    """G(w), its congealed target, and the EMA STN's congealed G(w) for fixed z and fixed noise."""
    trainable = {"stn": state.ema_stn, "congealing": state.params["congealing"]}
    terms = gangealing_objective(
        trainable, setup.frozen, z, None, psi, setup.distance,
        generator=setup.generator, stn=setup.stn, settings=setup.step_settings.objective,
    )  # fmt: skip
    return terms.unaligned, terms.target, terms.aligned_pred


def real_visual_images(config) -> jnp.ndarray | None:
    """The first `n_sample` real images of `real_data_path` in [-1, 1] (None without real data)."""
    if not config.real_data_path:
        return None
    images = PreparedDataset(config.real_data_path).images[: config.n_sample]
    return jnp.asarray(np.asarray(images, np.float32) / 127.5 - 1.0)


def congeal_real(setup: RunSetup, state, images, padding_mode: str):
    """Real images congealed by the EMA STN at their own resolution, and their average."""
    flow = setup.stn.config.flow_size
    inputs = resize_to_flow(images, flow) if images.shape[1] % flow == 0 else images
    out = setup.stn.apply(
        state.ema_stn, inputs, images, output_resolution=images.shape[1], padding_mode=padding_mode
    )
    return out.image, jnp.mean(out.image, axis=0, keepdims=True)


def export_model(directory, config, setup: RunSetup, state) -> pathlib.Path:
    """The inference bundle the applications load: EMA STN, congealing vector, configs."""
    host = jax.device_get(
        {
            "stn": state.ema_stn,
            "congealing": {
                "coefficients": state.params["congealing"]["coefficients"],
                "directions": setup.frozen.directions,
                "lat_mean": setup.frozen.lat_mean,
            },
        }
    )
    meta = {
        "stn": stn_config_to_dict(setup.stn.config),
        "generator": config_to_dict(setup.generator.config),
        "inject": int(config.inject),
        "num_heads": int(config.num_heads),
        "step": int(state.step),
        "test_time": config.test_time.to_dict(),
        "train_padding_mode": config.stn.padding_mode,
        "compute": dataclasses.asdict(setup.stn.policy),  # what the applications run with
    }
    # The whole folder is swapped in at once: a failed export leaves the previous one loadable.
    with atomic.staged_directory(directory) as tmp:
        save_bundle(tmp, TRAINED_MODEL_KIND, meta, host)
    return pathlib.Path(directory).absolute()


def train(config, workdir: str | os.PathLike) -> RunResult:
    workdir = pathlib.Path(workdir)
    initialize_distributed(bool(config.get("distributed", False)) or None)
    check_gangealing_config(config, jax.device_count())
    workdir.mkdir(parents=True, exist_ok=True)
    primary = jax.process_index() == 0
    if primary:
        atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
    devices = jax.devices()
    mesh = make_mesh(devices[: config.num_devices] if config.num_devices else devices)
    setup, state = build_run(
        config, jax.random.PRNGKey(config.seed), workdir / "congealing_init.npz"
    )
    ckpt_dir = workdir / "checkpoints"
    ckpts = CheckpointManager(ckpt_dir, save_every=config.ckpt_every, keep=config.keep_checkpoints)
    state = replicate(ckpts.restore_latest(state), mesh)
    start = int(state.step)
    step_fn = make_train_step(
        setup.generator, setup.stn, setup.optimizer, setup.step_settings,
        setup.optimizer_settings, mesh,
    )  # fmt: skip
    frozen, distance = replicate(setup.frozen, mesh), replicate(setup.distance, mesh)
    zero_lr_iters = set(lr_cycle_iters(config.anneal_psi, config.period, config.iters, config.tm))
    writer = MetricsWriter(workdir, enabled=primary, last_step=start)
    vis_z = jax.random.normal(
        jax.random.PRNGKey(config.seed + 1),
        (max(1, config.n_sample // config.num_heads), setup.generator.config.style_dim),
    )
    visuals = jax.jit(lambda s, z, psi: visual_batch(setup, s, z, psi))
    reals = real_visual_images(config)
    real_visuals = jax.jit(lambda s, x: congeal_real(setup, s, x, config.stn.padding_mode))
    metrics, interrupted = {}, False
    monitor = CollapseMonitor(hint=collapse_hint(config))
    bar = tqdm(range(start, config.iters), initial=start, total=config.iters, disable=not primary)
    with TerminationRequest() as stop:
        for index in bar:
            state, device_metrics = step_fn(state, frozen, distance)
            it = index + 1
            last = it == config.iters
            must_save = it % config.ckpt_every == 0 or it in zero_lr_iters or last
            if it % config.log_every == 0 or must_save or stop.requested:
                metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
                check_finite(metrics, it, ckpt_dir)
                writer.scalars(it, metrics)
                warning = monitor.update(it, metrics)
                if warning and primary:
                    tqdm.write(warning)
                bar.set_description(
                    f"perceptual {metrics['perceptual']:.4f} tv {metrics['tv']:.5f} "
                    f"identity {metrics['identity']:.4f} psi {metrics['psi']:.3f}"
                )
            if it % config.vis_every == 0 or last:
                psi = psi_at_iteration(it, config.anneal_psi, config.anneal_fn)
                unaligned, target, congealed = jax.device_get(visuals(state, vis_z, psi))
                writer.images(it, "samples/unaligned", unaligned)
                writer.images(it, "samples/target", target)
                writer.images(it, "samples/congealed", congealed)
                if reals is not None:
                    congealed_reals, average = jax.device_get(real_visuals(state, reals))
                    writer.images(it, "real/congealed", congealed_reals)
                    writer.images(it, "real/average", average, nrow=1)
            if must_save or stop.requested:
                ckpts.save(it, state, force=True)
            if stop.requested:
                interrupted = True
                break
    ckpts.close()
    model_dir = workdir / "model"
    if primary:
        export_model(model_dir, config, setup, state)
        atomic.write_json(workdir / "final_metrics.json", metrics, indent=2)
        atomic.write_json(workdir / "collapse.json", monitor.summary(), indent=2)
    writer.close()
    return RunResult(int(state.step), interrupted, metrics, model_dir, monitor.summary())


def collapse_hint(config) -> str:
    """What the collapse warning suggests, given the run's settings."""
    hints = []
    if config.stn.padding_mode == "border":
        # Clamped edge pixels make a zoomed-out view look like flat background; reflected ones
        # keep the image's structure, so zooming out stops paying.
        hints.append(
            "--config.stn.padding_mode=reflection --config.test_time.padding_mode=reflection"
        )
    hints.append(f"a lower --config.stn_lr (now {config.stn_lr:g})")
    if not config.get("zoom_out_weight", 0.0):
        hints.append("--config.zoom_out_weight=1")
    return "try " + ", or ".join(hints)
