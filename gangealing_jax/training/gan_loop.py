"""The StyleGAN2 training loop: data, logging, samples, checkpoints, export of the EMA generator.

`train_gan(config, workdir)` runs (or resumes) training to `config.steps` iterations. Work
directory layout:

    checkpoints/     orbax train states (the last `keep_checkpoints`), resumed from automatically
    generator/       the exported EMA generator: a bundle (`load_generator` reads it) + mean_latent.npy
    generator.npz    the same packed into one file (`load_generator` reads it too)
    data/            the procedural training set, rendered once (when not held in memory)
    images/          sample grids (fixed z, EMA generator, fixed noise), PNG
    metrics.jsonl    scalars per `log_every` iterations (means over the interval), also in tensorboard/
                     (with quality_frechet, quality_kid every `quality_every`: gan_quality.py)
"""

from __future__ import annotations

import collections
import functools
import os
import pathlib
import shutil
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax.errors import InputFileError
from gangealing_jax.models.discriminator import Discriminator, DiscriminatorConfig
from gangealing_jax.models.stylegan2 import Generator, GeneratorConfig
from gangealing_jax.training import gan, gan_iteration, gan_quality, generator_export, parallel
from gangealing_jax.training.checkpoints import CheckpointManager, TerminationRequest
from gangealing_jax.training.config_checks import check_gan_config
from gangealing_jax.training.gangealing_setup import compute_policy
from gangealing_jax.training.metrics_log import MetricsWriter, NonFiniteLossError, check_finite

_FAST_COMPILE = {"xla_backend_optimization_level": 0}


class GANRunResult(NamedTuple):
    state: gan.GANState
    step: int  # iterations completed
    interrupted: bool  # stopped early by SIGTERM or Ctrl-C (after saving)


# --- configuration -----------------------------------------------------------------------------


def build_setup(config, mesh) -> gan.GANSetup:
    m = config.model
    policy = compute_policy(config)
    channels = tuple(int(c) for c in m.channels)
    generator = Generator(
        GeneratorConfig(
            size=m.resolution,
            style_dim=m.style_dim,
            n_mlp=m.n_mlp,
            channels=channels,
            lr_mlp=m.lr_mlp,
        ),
        policy=policy,
    )
    d_channels = tuple(int(c) for c in m.d_channels) or channels
    # GGDR (configs written before it: off). The decoder exists only when it is trained, so a run
    # without GGDR keeps the plain discriminator and its checkpoints.
    ggdr_weight = float(config.get("ggdr_weight", 0.0))
    decoder_res = int(config.get("ggdr_resolution", 0)) if ggdr_weight > 0 else 0
    decoder_channels = generator.config.channels[decoder_res.bit_length() - 3] if decoder_res else 0
    discriminator = Discriminator(
        DiscriminatorConfig(
            size=m.resolution,
            channels=d_channels,
            stddev_group=m.stddev_group,
            decoder_resolution=decoder_res,
            decoder_channels=decoder_channels,
        ),
        policy=policy,
    )
    return gan.GANSetup(
        generator=generator,
        discriminator=discriminator,
        batch=config.batch,
        lr=config.lr,
        r1=config.r1,
        d_reg_every=config.d_reg_every,
        path_regularize=config.path_regularize,
        path_batch_shrink=config.path_batch_shrink,
        g_reg_every=config.g_reg_every,
        mixing=config.mixing,
        ema_decay=config.ema_decay,
        xflip=config.xflip,
        mesh=mesh,
        ggdr_weight=ggdr_weight,
    )


# --- data --------------------------------------------------------------------------------------


def training_images(config, workdir: pathlib.Path) -> np.ndarray:
    """(N, H, W, 3) uint8 (possibly memory-mapped) images to train on."""
    from gangealing_jax.data import families, prepared, procedural

    data, res = config.data, config.model.resolution
    name = data.get("family", "faces")
    if data.path:
        images = prepared.PreparedDataset(data.path).images
        # The procedural fields stay in the config whatever the data: say that they are unused.
        if jax.process_index() == 0:
            print(
                f"training on the {len(images)} images of {data.path}; data.family, data.size "
                "and data.clutter_range (the procedural family's) do nothing"
            )
    else:
        family = families.family_config(
            name,
            resolution=res,
            clutter_range=tuple(
                data.get("clutter_range", procedural.ProceduralConfig.clutter_range)
            ),
        )
        nbytes = data.size * res * res * 3
        if nbytes <= data.in_memory_max_mb * 2**20:
            images = families.family_module(name).generate(data.size, data.seed, family).images
        else:
            images = _procedural_on_disk(workdir / "data", data.size, data.seed, family, name)
    if images.ndim != 4 or images.shape[1:] != (res, res, 3) or images.dtype != np.uint8:
        raise InputFileError(
            f"--config.data.path={data.path}: its images are {images.dtype}"
            f"{list(images.shape)}; the model needs uint8 (N, {res}, {res}, 3): prepare the "
            f"data with --size {res} or set --config.model.resolution"
        )
    return images


def _procedural_on_disk(
    path: pathlib.Path, size: int, seed: int, family, name: str = "faces"
) -> np.ndarray:
    from gangealing_jax.data import prepared

    if (path / "meta.json").is_file():
        dataset = prepared.PreparedDataset(str(path))
        meta = dataset.meta
        if (
            len(dataset) == size
            and meta.get("seed") == seed
            and meta.get("family", "faces") == name
            and dataset.resolution == family.resolution
        ):
            return dataset.images
        raise InputFileError(
            f"{path} holds another procedural set ({len(dataset)} images, seed "
            f"{meta.get('seed')}, family {meta.get('family', 'faces')}, resolution "
            f"{dataset.resolution}); remove it or use another workdir"
        )
    if path.exists() and jax.process_index() == 0:
        shutil.rmtree(path)  # an interrupted rendering (no meta.json)
    if jax.process_index() == 0:
        prepared.write_procedural_dataset(str(path), size, seed, family, family=name)
    parallel.sync_processes("procedural_data")
    return prepared.PreparedDataset(str(path)).images


def batch_indices(step: int, batch: int, count: int, seed: int) -> np.ndarray:
    """Dataset rows of iteration `step`: consecutive slices of one permutation per epoch.

    A pure function of its arguments, so a resumed run reads exactly the batches it would have.
    """
    positions = step * batch + np.arange(batch)
    epochs, offsets = np.divmod(positions, count)
    out = np.empty(batch, np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(count)
        sel = epochs == epoch
        out[sel] = order[offsets[sel]]
    return out


def init_replicated(setup: gan.GANSetup, key: jax.Array) -> gan.GANState:
    """`gan.init_state` replicated over `setup.mesh`, jitted once per setup."""
    return _init_fn(setup)(setup, key)


@functools.lru_cache(maxsize=8)
def _init_fn(setup: gan.GANSetup):
    # Compiled without backend optimisations: it runs once, and its dozens of random draws cost
    # XLA's CPU compiler several times longer otherwise.
    return jax.jit(
        gan.init_state,
        static_argnums=0,
        out_shardings=parallel.replicated(setup.mesh),
        compiler_options=_FAST_COMPILE,
    )


@functools.lru_cache(maxsize=8)
def _sample_fn(generator: Generator):
    return jax.jit(lambda v, z: generator.apply(v, z, noise_mode="const"))


def quality_reference(config, images: np.ndarray) -> np.ndarray | None:
    """Features of the `quality_samples` training images the quality is measured against
    (a fixed subset; None when `quality_every` is 0)."""
    if not config.get("quality_every", 0):
        return None
    count = min(int(config.quality_samples), len(images))
    rows = np.random.default_rng([config.seed, 7]).choice(len(images), count, replace=False)
    return gan_quality.image_features(images[np.sort(rows)])


def _quality_key(seed: int) -> jax.Array:
    # The same latents at every measurement: the numbers move with the generator only. Folded
    # in, not split off the run's key, so the run's other draws stay as they were.
    return jax.random.fold_in(jax.random.PRNGKey(seed), 0x9A11)


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if x.dtype.kind == "f"]
    return jnp.all(jnp.stack(leaves))


# --- the loop ----------------------------------------------------------------------------------


def train_gan(config, workdir: str | os.PathLike) -> GANRunResult:
    """Trains (or resumes) the generator and discriminator to `config.steps` iterations."""
    from tqdm import tqdm

    parallel.initialize_distributed(config.distributed or None)
    check_gan_config(config, jax.device_count())
    workdir = pathlib.Path(workdir).absolute()
    main_process = jax.process_index() == 0
    mesh = parallel.make_mesh()
    setup = build_setup(config, mesh)
    parallel.check_batch_size(config.batch, mesh)
    steps = gan_iteration.make_steps(setup, fast_compile=config.fast_compile)
    images = training_images(config, workdir)
    rows = parallel.process_batch_slice(config.batch)

    init_key, sample_key, mean_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    state = init_replicated(setup, init_key)
    ckpt_dir = workdir / "checkpoints"
    ckpts = CheckpointManager(ckpt_dir, save_every=config.ckpt_every, keep=config.keep_checkpoints)
    state = ckpts.restore_latest(state)
    step = int(jax.device_get(state.step))

    # Scalars are logged under the index of the interval's last iteration (`i`, not `i + 1`).
    writer = MetricsWriter(workdir, enabled=main_process, last_step=step - 1)
    sample_z = jax.random.normal(sample_key, (config.n_samples, config.model.style_dim))
    quality_every = int(config.get("quality_every", 0))
    reference = quality_reference(config, images)

    def measure_quality() -> dict:
        fake = gan_quality.generator_features(
            setup.generator, parallel.host_copy(state.ema_variables()), _quality_key(config.seed),
            len(reference),
        )  # fmt: skip
        return gan_quality.scores(reference, fake).as_dict("quality_")

    sample = _sample_fn(setup.generator)

    def write_samples(at_step: int):
        grid = sample(parallel.host_copy(state.ema_variables()), sample_z)
        writer.images(at_step, "samples", np.asarray(grid))

    exported = [None]  # iteration of the last export

    def checkpoint(at_step: int, force: bool = False) -> None:
        if not (force or ckpts.should_save(at_step)):
            return
        if not bool(_all_finite((state.g_params, state.d_params, state.ema_params))):
            raise NonFiniteLossError(
                f"non-finite parameters after iteration {at_step}; training stopped without "
                f"saving. The last good checkpoint in {ckpt_dir} is intact."
            )
        saved = ckpts.save(at_step, state, force=force)
        if (saved or force) and exported[0] != at_step:
            generator_export.export_generator(
                workdir / "generator",
                setup.generator,
                state.ema_variables(),
                mean_key,
                config.mean_samples,
            )
            exported[0] = at_step

    sums, counts = collections.defaultdict(float), collections.defaultdict(int)
    interrupted = False
    try:
        with TerminationRequest() as stop:
            bar = tqdm(
                range(step, config.steps),
                initial=step,
                total=config.steps,
                desc="gan",
                disable=not (main_process and config.progress),
                dynamic_ncols=True,
            )
            if step == 0:
                write_samples(0)
            for i in bar:
                idx = batch_indices(i, config.batch, len(images), config.data.seed)
                real = parallel.shard_batch(images[np.sort(idx[rows])], mesh)
                state, metrics = gan_iteration.train_iteration(steps, setup, state, real, i)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(metrics, i, ckpt_dir)
                for k, v in metrics.items():
                    sums[k] += v
                    counts[k] += 1
                done = i + 1
                if done % config.log_every == 0 or done == config.steps:
                    means = {k: sums[k] / counts[k] for k in sums}
                    if quality_every and done % quality_every == 0:
                        means.update(measure_quality())
                    writer.scalars(i, means)
                    bar.set_postfix(
                        {k: f"{means[k]:.3f}" for k in ("d_loss", "g_loss", "r1") if k in means}
                    )
                    sums.clear()
                    counts.clear()
                if done % config.sample_every == 0:
                    write_samples(done)
                checkpoint(done)
                step = done
                if parallel.any_process(stop.requested):
                    interrupted = step < config.steps
                    break
            bar.close()
        checkpoint(step, force=True)
        if step % config.sample_every:
            write_samples(step)
    finally:
        writer.close()
        ckpts.close()
    return GANRunResult(state=state, step=step, interrupted=interrupted)
