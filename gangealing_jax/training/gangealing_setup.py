"""Building a GANgealing run from its config: the frozen generator, the STN, the loss, the state."""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax import atomic
from gangealing_jax.assets import EMBEDDED_GENERATORS, embedded_generator
from gangealing_jax.convert.stylegan2 import load_generator
from gangealing_jax.errors import ConfigError
from gangealing_jax.losses.gangealing import Frozen, ObjectiveSettings
from gangealing_jax.losses.perceptual import get_perceptual_loss
from gangealing_jax.models.stn import STN, STNConfig
from gangealing_jax.models.stylegan2 import Generator, GeneratorConfig
from gangealing_jax.models.stylegan2_ada import AdaGeneratorConfig, make_generator
from gangealing_jax.ops.precision import Policy, policy_from_fields
from gangealing_jax.training.augment import PoseAugmentation
from gangealing_jax.training.congealing_basis import (
    REFERENCE_BASIS,
    basis_fingerprint,
    basis_name,
    fixed_basis,
)
from gangealing_jax.training.gangealing_step import (
    OptimizerSettings,
    StepSettings,
    init_state,
    make_optimizer,
)
from gangealing_jax.training.latent_init import init_congealing


class RunSetup(NamedTuple):
    generator: Generator
    stn: STN
    frozen: Frozen
    distance: object  # pytree callable (x, y) -> (N,)
    optimizer: object
    step_settings: StepSettings
    optimizer_settings: OptimizerSettings


def load_frozen_generator(gcfg, key: jax.Array):
    """(GeneratorConfig, variables) named by `config.generator`.

    checkpoint: a reference `.pt`/`.npz`, a converted bundle directory, the name of a generator
    shipped in the package ("embedded", "embedded-butterflies") or "random" (an untrained
    generator of `random_*` sizes, for smoke tests).
    """
    source = gcfg.checkpoint
    if source == "random":
        size = int(gcfg.random_size)
        config = GeneratorConfig(
            size=size,
            style_dim=int(gcfg.random_style_dim),
            n_mlp=int(gcfg.random_n_mlp),
            channels=(int(gcfg.random_channels),) * (size.bit_length() - 2),
            lr_mlp=gcfg.lr_mlp,
        )
        generator = Generator(config)
        variables = jax.jit(
            lambda k: generator.init(k, jnp.zeros((1, config.style_dim)), noise_mode="const")
        )(key)
        return config, variables
    if source in EMBEDDED_GENERATORS:
        source = str(embedded_generator(source))
    return load_generator(source, module=gcfg.module, lr_mlp=gcfg.lr_mlp)


def check_trainable_generator(gconfig, checkpoint) -> None:
    """GANgealing samples z with w's size and gives G no label: refuse what needs more."""
    if isinstance(gconfig, AdaGeneratorConfig) and (
        gconfig.c_dim or gconfig.z_dim != gconfig.w_dim or gconfig.img_channels != 3
    ):
        raise ConfigError(
            f"--config.generator.checkpoint={checkpoint}: GANgealing needs an unconditional RGB "
            f"generator with z_dim == w_dim; this one has c_dim {gconfig.c_dim}, z_dim "
            f"{gconfig.z_dim}, w_dim {gconfig.w_dim}, {gconfig.img_channels} image channels"
        )


def tracked_mean_w(gconfig, gvars):
    """NVIDIA generators' w_avg (their truncation centre), None for the others."""
    if isinstance(gconfig, AdaGeneratorConfig):
        return np.asarray(gvars["buffers"]["w_avg"])
    return None


def compute_policy(config) -> Policy:
    """The `compute` fields as a Policy (configs written before they existed: the defaults)."""
    try:
        return policy_from_fields(config.get("compute"))
    except ValueError as e:
        raise ConfigError(f"--config.compute.{e}") from None


def stn_config(config) -> STNConfig:
    channels = tuple(tuple(pair) for pair in config.stn.channels)
    return STNConfig(
        transforms=tuple(config.stn.transforms),
        flow_size=config.stn.flow_size,
        supersize=max(config.real_size, config.stn.flow_size),
        channels=channels,
        channel_multiplier=config.stn.channel_multiplier,
        num_heads=config.num_heads,
        input_mask=config.stn.get("input_mask", "none"),
    )


def pose_augmentation(config) -> PoseAugmentation:
    """The `augment` fields (absent in configs written before they existed: no augmentation)."""
    aug = config.get("augment")
    if aug is None:
        return PoseAugmentation()
    return PoseAugmentation(
        rotation_deg=float(aug.rotation_deg),
        log_scale=float(aug.log_scale),
        translation=float(aug.translation),
    )


def settings_from_config(config):
    augment = config.get("augment") or {}  # configs written before these fields: none
    objective = ObjectiveSettings(
        inject=config.inject,
        padding_mode=config.stn.padding_mode,
        sample_from_full_res=config.sample_from_full_res,
        freeze_ll=config.freeze_ll,
        flips=config.flips,
        tv_weight=config.tv_weight,
        flow_identity_weight=config.flow_identity_weight,
        augment_padding=str(augment.get("padding_mode", "reflection")),
        equivariance_weight=float(augment.get("equivariance_weight", 0.0)),
        equivariance_every=int(augment.get("equivariance_every", 1)),
        symmetry_weight=float(config.get("symmetry_weight", 0.0)),
        mirror_weight=float(config.get("mirror_weight", 0.0)),
        zoom_out_weight=float(config.get("zoom_out_weight", 0.0)),
        zoom_out_max=float(config.get("zoom_out_max", 1.5)),
    )
    step = StepSettings(
        objective,
        batch=config.batch,
        grad_accum=config.grad_accum,
        images_per_pass=int((config.get("compute") or {}).get("images_per_pass", 0)),
        anneal_psi=config.anneal_psi,
        anneal_fn=config.anneal_fn,
        ema_decay=config.ema_decay,
        augment=pose_augmentation(config),
    )
    optim = OptimizerSettings(
        stn_lr=config.stn_lr,
        ll_lr=config.ll_lr,
        anneal_psi=config.anneal_psi,
        period=config.period,
        tm=config.tm,
        decay=config.decay,
        freeze_ll=config.freeze_ll,
    )
    return step, optim


def tree_fingerprint(tree) -> str:
    """SHA-256 of every leaf's path, dtype, shape and bytes: which generator a cache came from."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def congealing_cache_key(config, gvars) -> dict:
    """Everything the PCA buffers and initial coefficients depend on."""
    key = {
        "generator": tree_fingerprint(gvars),
        "ndirs": int(config.ndirs),
        "num_heads": int(config.num_heads),
        "inject": int(config.inject),
        "num_pca_samples": int(config.num_pca_samples),
        "pca_exact": bool(config.pca_exact),
        "seed": int(config.seed),
    }
    if config.num_heads > 1:  # k-means++ measures distances with the perceptual loss
        key["loss"] = json.loads(config.loss.to_json_best_effort())
    if basis_name(config) != REFERENCE_BASIS:  # absent for PCA: earlier caches stay valid
        key["basis"] = basis_fingerprint(basis_name(config))
    return key


def read_congealing_cache(path: pathlib.Path, key: dict):
    """(directions, lat_mean, coefficients) of the cache at `path`; None (with one line saying
    why) when it is absent, unreadable or was computed for other settings."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            stored = json.loads(str(data["key"])) if "key" in data.files else None
            arrays = data["directions"], data["lat_mean"], data["coefficients"]
    except (OSError, ValueError, KeyError) as err:
        why = f"it is unreadable ({err})"
    else:
        if stored == key:
            return arrays
        if stored is None:
            why = "it does not record what it was computed from"
        else:
            fields = sorted(k for k in set(key) | set(stored) if key.get(k) != stored.get(k))
            why = "it was computed for other settings: " + ", ".join(
                f"{k} {stored.get(k)!r} (now {key.get(k)!r})" if k != "generator" else
                "another generator"
                for k in fields
            )  # fmt: skip
    print(f"ignoring {path}: {why}; recomputing it", file=sys.stderr, flush=True)
    return None


def build_run(config, key: jax.Array, congealing_cache: pathlib.Path | None = None):
    """(RunSetup, initial state). The PCA buffers are cached in `congealing_cache` (an .npz) so a
    resumed run reuses them instead of recomputing."""
    g_key, stn_key, pca_key, run_key = jax.random.split(key, 4)
    gconfig, gvars = load_frozen_generator(config.generator, g_key)
    check_trainable_generator(gconfig, config.generator.checkpoint)
    policy = compute_policy(config)
    generator = make_generator(gconfig, policy=policy)
    if config.inject > gconfig.n_latent:
        raise ConfigError(
            f"--config.inject={config.inject}: the generator has only {gconfig.n_latent} W+ "
            f"layers; use at most {gconfig.n_latent}"
        )
    stn = STN(stn_config(config), policy=policy)
    distance = get_perceptual_loss(config, policy)
    flow = config.stn.flow_size
    stn_vars = jax.jit(stn.init)(stn_key, jnp.zeros((1, flow, flow, 3)))
    cache_key = congealing_cache_key(config, gvars) if congealing_cache is not None else None
    cached = read_congealing_cache(congealing_cache, cache_key) if cache_key else None
    if cached is not None:
        directions, lat_mean, coefficients = cached
    else:
        basis = basis_name(config)
        fixed = None
        if basis != REFERENCE_BASIS:
            fixed = functools.partial(
                fixed_basis, basis, generator, gvars, ndirs=config.ndirs, inject=config.inject,
                num_samples=config.num_pca_samples,
            )  # fmt: skip
        init = init_congealing(
            generator,
            gvars,
            pca_key,
            ndirs=config.ndirs,
            num_heads=config.num_heads,
            num_pca_samples=config.num_pca_samples,
            exact_pca_fit=config.pca_exact,
            distance=distance,
            inject_index=config.inject,
            mean_w=tracked_mean_w(gconfig, gvars),
            fixed_basis=fixed,
        )
        directions, lat_mean, coefficients = init.directions, init.lat_mean, init.coefficients
        if congealing_cache is not None and jax.process_index() == 0:
            with atomic.open_for_write(congealing_cache) as f:
                np.savez(
                    f, directions=directions, lat_mean=lat_mean, coefficients=coefficients,
                    key=np.asarray(json.dumps(cache_key, sort_keys=True)),
                )  # fmt: skip
    step_settings, optimizer_settings = settings_from_config(config)
    optimizer = make_optimizer(optimizer_settings)
    frozen = Frozen(gvars, jnp.asarray(directions), jnp.asarray(lat_mean))
    params = {"stn": stn_vars, "congealing": {"coefficients": jnp.asarray(coefficients)}}
    state = init_state(params, optimizer, run_key)
    setup = RunSetup(generator, stn, frozen, distance, optimizer, step_settings, optimizer_settings)
    return setup, state
