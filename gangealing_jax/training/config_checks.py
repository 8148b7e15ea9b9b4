"""Checks of every config value that can be judged without running, done before any work.

A bad value found here costs the user a second, not the minutes of setup (generator loading,
PCA, compilation) after which it would otherwise fail, and leaves no work directory behind. Each
message names the field as it is typed on the command line (`--config.batch`) and a valid value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from gangealing_jax.assets import EMBEDDED_GENERATORS
from gangealing_jax.errors import ConfigError, InputFileError
from gangealing_jax.losses.perceptual import WEIGHT_FREE_LOSSES, WEIGHTED_LOSSES, require_weights
from gangealing_jax.models.stn import TRANSFORMS
from gangealing_jax.ops import precision
from gangealing_jax.ops.sampling import PADDING_MODES
from gangealing_jax.training.schedules import PSI_ANNEALING

GENERATOR_KEYWORDS = (*EMBEDDED_GENERATORS, "random")
EVAL_PROTOCOLS = ("spair", "cub")  # apps.pck.PROTOCOLS (a higher layer, so named again here)
EVAL_PROCEDURAL = "procedural"


class _Checker:
    """Raises at the first bad field of a config; `flag` is the prefix users type before it."""

    def __init__(self, config, flag: str = "--config."):
        self.config = config
        self.flag = flag

    def value(self, field: str):
        node = self.config
        for part in field.split("."):
            node = node.get(part) if hasattr(node, "get") else None
            if node is None:
                return None
        return node

    def fail(self, field: str, problem: str, fix: str):
        raise ConfigError(f"{self.flag}{field}={self.value(field)!r}: {problem}; {fix}")

    def number(self, field: str, *, low=None, high=None, low_open=False, integer=False, example):
        value = self.value(field)
        if value is None:
            return None  # fields absent from older configs keep their code defaults
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            self.fail(field, f"must be {kind}", f"e.g. {self.flag}{field}={example}")
        below = low is not None and (value <= low if low_open else value < low)
        if below or (high is not None and value > high):
            bounds = []
            if low is not None:
                bounds.append(f"{'>' if low_open else '>='} {low}")
            if high is not None:
                bounds.append(f"<= {high}")
            self.fail(
                field, f"must be {' and '.join(bounds)}", f"e.g. {self.flag}{field}={example}"
            )
        return value

    def positive_int(self, field: str, example):
        return self.number(field, low=1, integer=True, example=example)

    def choice(self, field: str, known: Sequence[str]):
        value = self.value(field)
        if value is not None and value not in known:
            self.fail(field, "unknown name", f"choose one of {', '.join(known)}")
        return value

    def existing_path(self, field: str, *, allowed: Sequence[str] = (), what: str = "file"):
        value = self.value(field)
        if not value or value in allowed:
            return value
        if not os.path.exists(os.path.expanduser(str(value))):
            extra = f" (or one of {', '.join(allowed)})" if allowed else ""
            raise InputFileError(
                f"{self.flag}{field}={value}: no such {what}; give an existing path{extra}"
            )
        return value

    def divisible(self, field: str, value: int, by: int, reason: str):
        if value % by:
            below = (value // by) * by
            fix = f"use {below} or {below + by}" if below else f"use {by}"
            self.fail(field, f"{value} is not divisible by {reason} ({by})", fix)


def _check_compute(c: _Checker) -> None:
    c.choice("compute.dtype", tuple(precision.DTYPES))
    c.choice("compute.matmul_precision", ("auto", *precision.PRECISIONS))
    c.choice("compute.kernels", precision.KERNELS)
    c.number("compute.images_per_pass", low=0, integer=True, example=4)


def check_gangealing_config(config, device_count: int | None = None) -> None:
    """Raises ConfigError (or InputFileError, MissingWeightsError) for the first bad field of a
    `configs/default.py`-style config. `device_count`: the devices the run will shard over."""
    c = _Checker(config)
    checkpoint = c.existing_path(
        "generator.checkpoint", allowed=GENERATOR_KEYWORDS, what="generator checkpoint"
    )
    if not checkpoint:
        c.fail("generator.checkpoint", "is empty", "give a .pt/.npz file, 'embedded' or 'random'")
    c.number("generator.lr_mlp", low=0, low_open=True, example=0.01)
    if checkpoint == "random":
        size = c.number("generator.random_size", low=4, integer=True, example=16)
        if size & (size - 1):
            c.fail("generator.random_size", "must be a power of two", "e.g. 16")
        for field, example in (
            ("random_style_dim", 32),
            ("random_n_mlp", 2),
            ("random_channels", 16),
        ):
            c.positive_int(f"generator.{field}", example)
    c.number("generator.num_fp16_res", low=0, integer=True, example=4)
    c.positive_int("iters", 1000)
    batch = c.positive_int("batch", 40)
    accum = c.positive_int("grad_accum", 1)
    c.divisible("batch", batch, accum, "--config.grad_accum")
    _check_compute(c)
    c.positive_int("inject", 5)
    ndirs = c.positive_int("ndirs", 1)
    c.number("num_pca_samples", low=max(ndirs, 2), integer=True, example=100_000)
    c.existing_path("congealing.basis", allowed=("pca", "sefa"), what="directions file")
    c.positive_int("anneal_psi", 150_000)
    c.choice("anneal_fn", sorted(PSI_ANNEALING))
    c.positive_int("num_heads", 1)
    c.number("augment.rotation_deg", low=0, high=179.9, example=15.0)
    c.number("augment.log_scale", low=0, example=0.1)
    c.number("augment.translation", low=0, example=0.1)
    c.choice("augment.padding_mode", PADDING_MODES)
    c.positive_int("augment.equivariance_every", 2)
    loss = c.choice("loss.name", WEIGHTED_LOSSES + WEIGHT_FREE_LOSSES)
    if loss in WEIGHTED_LOSSES:
        require_weights(c.value("loss.weights"), loss)
    c.positive_int("loss.num_scales", 3)
    for field in ("tv_weight", "flow_identity_weight", "symmetry_weight", "mirror_weight",
                  "augment.equivariance_weight"):  # fmt: skip
        c.number(field, low=0, example=1.0)
    transforms = c.value("stn.transforms")
    if not transforms or any(t not in TRANSFORMS for t in transforms):
        c.fail("stn.transforms", "unknown transform", f"use a sequence of {', '.join(TRANSFORMS)}")
    c.choice("stn.padding_mode", PADDING_MODES)
    c.positive_int("stn.flow_size", 128)
    c.number("stn.channel_multiplier", low=0, low_open=True, example=0.5)
    c.positive_int("real_size", 256)
    c.number("stn_lr", low=0, low_open=True, example=0.001)
    c.number("ll_lr", low=0, example=0.01)
    c.number("period", low=0, low_open=True, example=37_500.0)
    c.number("decay", low=0, high=1, low_open=True, example=0.9)
    c.positive_int("tm", 2)
    c.number("ema_decay", low=0, high=1, example=0.999)
    for field, example in (("log_every", 25), ("vis_every", 5000), ("ckpt_every", 50_000),
                           ("keep_checkpoints", 3), ("n_sample", 64), ("vis_batch_size", 250)):  # fmt: skip
        c.positive_int(field, example)
    c.number("n_mean", low=0, integer=True, example=8000)
    c.existing_path("real_data_path", what="prepared dataset")
    c.number("test_time.iters", low=1, integer=True, example=1)
    c.choice("test_time.padding_mode", PADDING_MODES)
    c.existing_path("eval.data", allowed=(EVAL_PROCEDURAL,), what="prepared dataset")
    c.choice("eval.protocol", EVAL_PROTOCOLS)
    for alpha in c.value("eval.alphas") or ():
        if not 0 < alpha <= 1:
            c.fail("eval.alphas", f"threshold {alpha} is not in (0, 1]", "e.g. '(0.1, 0.05)'")
    for field, example in (("eval.batch", 16), ("eval.num_pairs", 1000), ("eval.resolution", 64)):
        c.positive_int(field, example)
    c.number("eval.count", low=2, integer=True, example=500)
    devices = c.number("num_devices", low=0, integer=True, example=0)
    if device_count is not None:
        if devices and devices > device_count:
            c.fail("num_devices", f"only {device_count} devices are present", "use 0 (all)")
        used = devices or device_count
        micro = batch // accum  # each micro-batch is split over the devices
        if micro % used:
            c.fail(
                "batch", f"{micro} images per micro-batch (batch / grad_accum) do not split "
                f"over {used} devices", f"use a multiple of {used * accum}",
            )  # fmt: skip


def check_gan_config(config, device_count: int | None = None) -> None:
    """The same for a `configs/gan/*.py` config."""
    c = _Checker(config)
    res = c.number("model.resolution", low=4, integer=True, example=32)
    if res & (res - 1):
        c.fail("model.resolution", "must be a power of two", "e.g. 32")
    levels = res.bit_length() - 2  # resolutions 4, 8, ..., res
    for field in ("model.channels", "model.d_channels"):
        widths = c.value(field)
        if widths is None or (field.endswith("d_channels") and len(widths) == 0):
            continue
        if len(widths) != levels or any(int(w) < 1 for w in widths):
            c.fail(field, f"needs {levels} positive widths (resolutions 4..{res})",
                   f"e.g. {(64,) * levels}")  # fmt: skip
    c.positive_int("model.style_dim", 128)
    c.positive_int("model.n_mlp", 4)
    c.number("model.lr_mlp", low=0, low_open=True, example=0.01)
    c.positive_int("model.stddev_group", 4)
    _check_compute(c)
    c.existing_path("data.path", what="prepared dataset")
    c.positive_int("data.size", 20_000)
    c.number("data.in_memory_max_mb", low=0, example=256)
    batch = c.positive_int("batch", 16)
    c.positive_int("steps", 6000)
    c.number("lr", low=0, low_open=True, example=0.002)
    c.number("r1", low=0, example=0.1)
    c.positive_int("d_reg_every", 16)
    c.number("path_regularize", low=0, example=2.0)
    shrink = c.positive_int("path_batch_shrink", 2)
    if batch // shrink < 1:
        c.fail("path_batch_shrink", f"leaves no image of the batch of {batch}", "e.g. 2")
    c.positive_int("g_reg_every", 4)
    c.number("mixing", low=0, high=1, example=0.9)
    c.number("ema_decay", low=0, high=1, example=0.998)
    for field, example in (("log_every", 50), ("sample_every", 500), ("n_samples", 64),
                           ("ckpt_every", 500), ("keep_checkpoints", 3), ("mean_samples", 10_000)):  # fmt: skip
        c.positive_int(field, example)
    if c.number("ggdr_weight", low=0, example=10.0):
        example = max(8, res // 4)
        ggdr_res = c.number("ggdr_resolution", low=8, high=res, integer=True, example=example)
        if ggdr_res is None or ggdr_res & (ggdr_res - 1):
            c.fail("ggdr_resolution", f"must be a power of two in 8..{res}", f"e.g. {example}")
    if c.number("quality_every", low=0, integer=True, example=500):
        c.number("quality_samples", low=2, integer=True, example=1000)
        if c.value("quality_samples") is None:
            c.fail("quality_samples", "is needed when quality_every > 0", "e.g. 1000")
        if config.quality_every % config.log_every:
            c.fail("quality_every", f"must be a multiple of log_every ({config.log_every}), "
                   "whose records it joins", f"e.g. {config.log_every * 10}")  # fmt: skip
    if device_count is not None:
        c.divisible("batch", batch, device_count, "the devices")


def check_classifier_args(
    *, iters, batch, lr, period, ckpt_every, log_every, num_devices, device_count=None
) -> None:
    """The flags of `train_cluster_classifier`, named as typed (`--batch`)."""
    values = dict(iters=iters, batch=batch, lr=lr, period=period, ckpt_every=ckpt_every,
                  log_every=log_every, num_devices=num_devices)  # fmt: skip
    c = _Checker(values, flag="--")
    for field, example in (("iters", 55_000), ("batch", 40), ("ckpt_every", 50_000),
                           ("log_every", 25)):  # fmt: skip
        c.positive_int(field, example)
    c.number("lr", low=0, low_open=True, example=0.001)
    c.number("period", low=0, low_open=True, example=50_000.0)
    c.number("num_devices", low=0, integer=True, example=0)
    if device_count is not None:
        if num_devices > device_count:
            c.fail("num_devices", f"only {device_count} devices are present", "use 0 (all)")
        c.divisible("batch", batch, num_devices or device_count, "the devices")
