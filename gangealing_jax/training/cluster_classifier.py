"""Training the cluster classifier of a clustering GANgealing run against its frozen STN.

Every step draws fresh fake images G(w), labels each with the candidate (head, and mirrored or not)
whose congealed output is perceptually closest to that head's congealed target at psi = 0, and
takes one Adam step on the cross-entropy of the classifier's logits for the (unmirrored) image
resized to flow_size. The learning rate follows the decaying cosine warm restarts from the first
iteration (no psi annealing here). The classifier starts from the run's similarity STN trunk.

Accuracy is the reference's "reverse" top-k: the classifier's best class is among the k candidates
of smallest distance.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import shard_map
from jax.sharding import Mesh, PartitionSpec
from tqdm import tqdm

from gangealing_jax import atomic
from gangealing_jax.convert.bundle import TRAINED_MODEL_KIND, is_bundle, load_bundle, save_bundle
from gangealing_jax.convert.cluster_classifier import (
    CLASSIFIER_KIND,
    classifier_config_to_dict,
    init_from_stn,
)
from gangealing_jax.convert.state_dict import CheckpointError
from gangealing_jax.convert.stn import stn_config_from_dict
from gangealing_jax.convert.stylegan2 import config_to_dict
from gangealing_jax.errors import ConfigError, InputFileError
from gangealing_jax.losses.gangealing import (
    Frozen,
    ObjectiveSettings,
    draw_noise,
    gangealing_objective,
    resize_to_flow,
)
from gangealing_jax.losses.perceptual import get_perceptual_loss
from gangealing_jax.models.cluster_classifier import ClusterClassifier, classifier_config_for_stn
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stylegan2 import Generator
from gangealing_jax.models.stylegan2_ada import make_generator
from gangealing_jax.ops.precision import Policy
from gangealing_jax.training.checkpoints import CheckpointManager, TerminationRequest
from gangealing_jax.training.config_checks import check_classifier_args
from gangealing_jax.training.gangealing_setup import compute_policy, load_frozen_generator
from gangealing_jax.training.metrics_log import MetricsWriter, check_finite
from gangealing_jax.training.parallel import DATA_AXIS, make_mesh, replicate, replicated
from gangealing_jax.training.schedules import lr_cycle_iters, make_lr_schedule


class Teacher(NamedTuple):
    """The frozen models that label fake images."""

    frozen: Frozen  # generator variables, PCA directions (ndirs, D), lat_mean (1, D)
    stn: dict  # STN variables of the run (its EMA STN)
    coefficients: jnp.ndarray  # (K, ndirs) congealing coefficients


class FakeBatch(NamedTuple):
    images: jnp.ndarray  # (N, F, F, 3) G(w) resized to flow_size: the classifier's input
    labels: jnp.ndarray  # (N,) int32 best candidate j; j >= K means head j - K, mirrored
    distances: jnp.ndarray  # (N, J) perceptual distance per candidate, J = K * (1 + flips)


def labelling_settings(run_objective: ObjectiveSettings) -> ObjectiveSettings:
    """The run's objective settings, without the flow regularisers (only distances are needed)."""
    return dataclasses.replace(
        run_objective, freeze_ll=True, tv_weight=0.0, flow_identity_weight=0.0
    )


def label_fake_images(
    teacher: Teacher, z, noise, distance, *, generator: Generator, stn: STN, settings
) -> FakeBatch:
    """Fake images and their best (head, flip) under the teacher at psi = 0 (no gradients)."""
    trainable = {"stn": teacher.stn, "congealing": {"coefficients": teacher.coefficients}}
    terms = gangealing_objective(
        trainable, teacher.frozen, z, noise, jnp.float32(0.0), distance,
        generator=generator, stn=stn, settings=labelling_settings(settings),
    )  # fmt: skip
    images = resize_to_flow(terms.unaligned, stn.config.flow_size)
    return jax.lax.stop_gradient(FakeBatch(images, terms.assignments, terms.distances))


def classifier_metrics(logits, labels, distances) -> dict:
    """Cross-entropy, reverse top-1/top-2 accuracy and the share of every class (true, predicted)."""
    num_classes = logits.shape[1]
    predicted = jnp.argmax(logits, axis=1)
    metrics = {
        "cross_entropy": optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    }
    for k in (1, 2):
        _, best = jax.lax.top_k(-distances, min(k, num_classes))  # (N, k)
        metrics[f"acc{k}"] = jnp.mean(jnp.any(best == predicted[:, None], axis=1))
    for j in range(num_classes):
        metrics[f"head_{j}"] = jnp.mean(labels == j)
        metrics[f"pred_head_{j}"] = jnp.mean(predicted == j)
    return metrics


def classifier_gradients(params, batch: FakeBatch, *, classifier: ClusterClassifier):
    """(gradients of the mean cross-entropy, metrics) on one labelled batch."""

    def loss_fn(p):
        logits = classifier.apply(p, batch.images)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels).mean()
        return loss, logits

    (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, classifier_metrics(logits, batch.labels, batch.distances)


class ClassifierState(flax.struct.PyTreeNode):
    step: jnp.ndarray  # () int32, optimizer steps taken
    params: dict  # classifier variables {'params': ...}
    opt_state: Any
    rng: jnp.ndarray  # (2,) uint32 base key of the run


@dataclasses.dataclass(frozen=True)
class ClassifierStepSettings:
    objective: ObjectiveSettings  # the run's objective settings (flips, inject, padding, ...)
    batch: int = 40  # global images per step
    lr: float = 1e-3  # base learning rate (reference: cls_lr)
    period: float = 50_000.0  # cosine period in iterations
    tm: int = 2  # period multiplier at every restart
    decay: float = 0.9  # learning-rate decay at every restart

    def schedule(self):
        return make_lr_schedule(
            self.lr, anneal_psi=0, period=self.period, t_mult=self.tm, decay=self.decay
        )


def make_optimizer(settings: ClassifierStepSettings) -> optax.GradientTransformation:
    return optax.adam(settings.schedule(), b1=0.9, b2=0.999, eps=1e-8)


def init_state(params, optimizer, rng: jax.Array) -> ClassifierState:
    params = jax.tree.map(jnp.array, params)  # own buffers: the state is donated to the step
    rng = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    return ClassifierState(jnp.zeros((), jnp.int32), params, optimizer.init(params), rng)


def _per_device(params, teacher, distance, z, noise, *, label, classifier, axis_name):
    batch = label(teacher, z, noise, distance)
    grads, metrics = classifier_gradients(params, batch, classifier=classifier)
    if axis_name is not None:  # every device holds an equal share of the batch
        grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
    return grads, metrics


def train_step(
    state: ClassifierState,
    teacher: Teacher,
    distance,
    *,
    generator: Generator,
    stn: STN,
    classifier: ClusterClassifier,
    optimizer: optax.GradientTransformation,
    settings: ClassifierStepSettings,
    mesh: Mesh | None = None,
):
    """One optimizer step -> (new state, metrics). z and noise are drawn for the global batch
    first, so the result does not depend on how many devices share the work."""
    key = jax.random.fold_in(state.rng, state.step)
    z_key, noise_key = jax.random.split(key)
    z = jax.random.normal(z_key, (settings.batch, generator.config.style_dim))
    noise = draw_noise(generator, noise_key, settings.batch, stn.config.num_heads)
    label = functools.partial(
        label_fake_images, generator=generator, stn=stn, settings=settings.objective
    )
    fn = functools.partial(_per_device, label=label, classifier=classifier)
    if mesh is None:
        grads, metrics = fn(state.params, teacher, distance, z, noise, axis_name=None)
    else:
        rep, rows = PartitionSpec(), PartitionSpec(DATA_AXIS)
        grads, metrics = shard_map(
            functools.partial(fn, axis_name=DATA_AXIS),
            mesh=mesh,
            in_specs=(rep, rep, rep, rows, rows),
            out_specs=(rep, rep),
            check_vma=False,
        )(state.params, teacher, distance, z, noise)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["lr"] = settings.schedule()(state.step)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(generator, stn, classifier, optimizer, settings, mesh: Mesh | None = None):
    """The jitted step `(state, teacher, distance) -> (state, metrics)`; the state is donated."""
    shardings = {}
    if mesh is not None:
        if settings.batch % mesh.devices.size:
            raise ConfigError(
                f"--batch={settings.batch} is not divisible by the {mesh.devices.size} devices"
            )
        shardings = dict(in_shardings=replicated(mesh), out_shardings=replicated(mesh))
    step = functools.partial(
        train_step, generator=generator, stn=stn, classifier=classifier, optimizer=optimizer,
        settings=settings, mesh=mesh,
    )  # fmt: skip
    return jax.jit(step, donate_argnums=(0,), **shardings)


class TrainedRun(NamedTuple):
    """What the classifier needs from a GANgealing work directory."""

    config: ml_collections.ConfigDict  # the run's config.json
    generator: Generator
    stn: STN
    teacher: Teacher
    distance: Any
    model_dir: pathlib.Path
    policy: Policy  # the run's compute section: the classifier trains with it too


def load_trained_run(run_dir: str | os.PathLike) -> TrainedRun:
    """A GANgealing work directory: config.json, model/ bundle, and the generator it names."""
    run_dir = pathlib.Path(run_dir)
    model_dir = run_dir / "model"
    if not (run_dir / "config.json").is_file() or not is_bundle(model_dir):
        raise CheckpointError(
            f"{run_dir}: not a finished GANgealing work directory (needs config.json and model/)"
        )
    config = ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text()))
    policy = compute_policy(config)
    meta, variables = load_bundle(model_dir, kind=TRAINED_MODEL_KIND)
    # The run drew its generator key first from PRNGKey(seed) (matters for "random" generators).
    g_key = jax.random.split(jax.random.PRNGKey(config.seed), 4)[0]
    gconfig, gvars = load_frozen_generator(config.generator, g_key)
    if json.dumps(config_to_dict(gconfig), sort_keys=True) != json.dumps(
        meta["generator"], sort_keys=True
    ):
        raise CheckpointError(
            f"{run_dir}: the generator named in config.json ({config.generator.checkpoint}) is "
            "not the one the model was trained with"
        )
    stn = STN(stn_config_from_dict(meta["stn"]), policy=policy)
    congealing = variables["congealing"]
    teacher = Teacher(
        Frozen(gvars, jnp.asarray(congealing["directions"]), jnp.asarray(congealing["lat_mean"])),
        jax.tree.map(jnp.asarray, variables["stn"]),
        jnp.asarray(congealing["coefficients"]),
    )
    generator = make_generator(gconfig, policy=policy)
    distance = get_perceptual_loss(config, policy)
    return TrainedRun(config, generator, stn, teacher, distance, model_dir, policy)


def run_objective_settings(run: TrainedRun) -> ObjectiveSettings:
    c = run.config
    return ObjectiveSettings(
        inject=int(c.inject),
        padding_mode=c.stn.padding_mode,
        sample_from_full_res=bool(c.sample_from_full_res),
        flips=bool(c.flips),
    )


def export_classifier(directory, classifier: ClusterClassifier, state, model_dir) -> pathlib.Path:
    """The classifier bundle (kind 'cluster_classifier') that the applications load."""
    cfg = classifier.config
    meta = {
        "classifier": classifier_config_to_dict(cfg),
        "num_heads": cfg.num_heads,
        "flips": cfg.flips,
        "step": int(state.step),
        "model": str(pathlib.Path(model_dir).absolute()),
    }
    with atomic.staged_directory(directory) as tmp:  # a failed export keeps the previous one
        save_bundle(tmp, CLASSIFIER_KIND, meta, jax.device_get(state.params))
    return pathlib.Path(directory).absolute()


class ClassifierRunResult(NamedTuple):
    step: int
    interrupted: bool
    metrics: dict
    classifier_dir: pathlib.Path


def train_classifier(
    run_dir, workdir, *, iters: int = 55_000, batch: int = 40, lr: float = 1e-3,
    period: float = 50_000.0, seed: int = 0, ckpt_every: int = 50_000, log_every: int = 25,
    num_devices: int = 0,
) -> ClassifierRunResult:  # fmt: skip
    """Trains (or resumes) the classifier of the run in `run_dir`; exports workdir/classifier."""
    check_classifier_args(
        iters=iters, batch=batch, lr=lr, period=period, ckpt_every=ckpt_every,
        log_every=log_every, num_devices=num_devices, device_count=jax.device_count(),
    )  # fmt: skip
    run = load_trained_run(run_dir)
    settings = ClassifierStepSettings(
        run_objective_settings(run), batch=batch, lr=lr, period=period,
        tm=int(run.config.tm), decay=float(run.config.decay),
    )  # fmt: skip
    classifier = ClusterClassifier(
        classifier_config_for_stn(run.stn.config, settings.objective.flips), policy=run.policy
    )
    if classifier.config.num_classes < 2:
        raise InputFileError(
            f"{run_dir}: a single-head run without flips has nothing to classify; the "
            "classifier is for runs with num_heads > 1 or flips"
        )
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    primary = jax.process_index() == 0
    if primary:
        args = dict(model=str(run_dir), iters=iters, batch=batch, lr=lr, period=period, seed=seed)
        atomic.write_json(workdir / "config.json", args, indent=2)
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    flow = classifier.config.size
    params = jax.jit(classifier.init)(init_key, jnp.zeros((1, flow, flow, 3)))
    params = init_from_stn(params, run.teacher.stn, run.stn.config)
    optimizer = make_optimizer(settings)
    devices = jax.devices()
    mesh = make_mesh(devices[:num_devices] if num_devices else devices)
    ckpts = CheckpointManager(workdir / "checkpoints", save_every=ckpt_every)
    state = replicate(ckpts.restore_latest(init_state(params, optimizer, run_key)), mesh)
    step_fn = make_train_step(run.generator, run.stn, classifier, optimizer, settings, mesh)
    teacher, distance = replicate(run.teacher, mesh), replicate(run.distance, mesh)
    zero_lr_iters = set(lr_cycle_iters(0, period, iters, settings.tm))
    metrics, interrupted, start = {}, False, int(state.step)
    writer = MetricsWriter(workdir, enabled=primary, last_step=start)
    bar = tqdm(range(start, iters), initial=start, total=iters, disable=not primary)
    with TerminationRequest() as stop:
        for index in bar:
            state, device_metrics = step_fn(state, teacher, distance)
            it = index + 1
            must_save = it % ckpt_every == 0 or it in zero_lr_iters or it == iters
            if it % log_every == 0 or must_save or stop.requested:
                metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
                check_finite(metrics, it, ckpts.directory)
                writer.scalars(it, metrics)
                bar.set_description(
                    f"cross entropy {metrics['cross_entropy']:.4f} top-1 {metrics['acc1']:.3f} "
                    f"top-2 {metrics['acc2']:.3f}"
                )
            if must_save or stop.requested:
                ckpts.save(it, state, force=True)
            if stop.requested:
                interrupted = True
                break
    ckpts.close()
    writer.close()
    out = workdir / "classifier"
    if primary:
        export_classifier(out, classifier, state, run.model_dir)
        atomic.write_json(workdir / "final_metrics.json", metrics, indent=2)
    return ClassifierRunResult(int(state.step), interrupted, metrics, out)
