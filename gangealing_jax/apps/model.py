"""Loading a trained alignment model (and its cluster classifier) for the applications.

Accepted paths: the `model/` bundle a training run exports (or its work directory), a converted
checkpoint directory (`python -m gangealing_jax.convert`), a reference GANgealing checkpoint
(`.pt`, its `t_ema` module), or the work directory of a cluster classifier
(`gangealing_jax.train_cluster_classifier`), which records the model it was trained for.

A clustering model (num_heads > 1) picks each image's head with its cluster classifier
(`apps.routing`). `load_model` attaches one from, in this order: the `classifier` argument (an
exported classifier, its work directory, or a reference checkpoint with a `classifier` module);
the classifier work directory given as the path; `classifier/` beside the model's bundle (in a
training work directory: train the classifier with `--workdir RUN/classifier`) or inside a
converted checkpoint; the `classifier` module of a reference checkpoint.

The STN and the classifier compute with the numerics policy (`ops/precision.py`) the model was
trained with: the `compute` section its export records (or, for exports that predate it, its
training work directory's config.json); converted and reference checkpoints, which record none,
get float32 at the backend's precision. `load_model(..., policy=...)` overrides it.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gangealing_jax.convert.bundle import TRAINED_MODEL_KIND, bundle_kind, is_bundle, load_bundle
from gangealing_jax.convert.cluster_classifier import (
    CLASSIFIER_KIND,
    classifier_variables_from_state,
    load_classifier,
)
from gangealing_jax.convert.state_dict import CheckpointError, module_state, read_checkpoint
from gangealing_jax.convert.stn import load_stn, stn_config_from_dict, stn_variables_from_state
from gangealing_jax.models.cluster_classifier import ClusterClassifier
from gangealing_jax.models.stn import STN
from gangealing_jax.ops.precision import Policy, policy_from_fields

# What a reference checkpoint does not record; the reference's application scripts pass these.
DEFAULT_TEST_TIME = {
    "iters": 1, "padding_mode": "border", "flips": False, "mirror_average": False
}  # fmt: skip
CLASSIFIER_MODULE = "classifier"  # the classifier's module in reference checkpoints
UNRECORDED = Policy(matmul_precision="auto")  # a training config's defaults (configs/default.py)
_MODEL_PATHS = (
    "pass a training work directory, its model/ folder, a converted checkpoint directory or a "
    "reference GANgealing checkpoint (.pt)"
)


def stn_input(source, flow_size: int):
    """The STN (and the classifier) read flow_size or a multiple of it; other sizes are resized
    (anti-aliased)."""
    if source.shape[1] % flow_size == 0:
        return source
    shape = (source.shape[0], flow_size, flow_size, source.shape[3])
    return jax.image.resize(source, shape, "linear", antialias=True)


class Classifier(NamedTuple):
    """A cluster classifier: which head (and, with 2K classes, whether to mirror) per image."""

    module: ClusterClassifier
    variables: dict
    path: str

    @property
    def flips(self) -> bool:
        return self.module.config.flips

    def logits(self, images):
        """(N, K) or (N, 2K) logits for NHWC images in [-1, 1] of any square size."""
        return self.module.apply(self.variables, stn_input(images, self.module.config.size))


class AlignmentModel(NamedTuple):
    stn: STN
    variables: dict
    test_time: dict  # iters, padding_mode, flips, mirror_average used on real images
    path: str
    classifier: Classifier | None = None  # picks the heads of a clustering model

    @property
    def flow_size(self) -> int:
        return self.stn.config.flow_size

    @property
    def policy(self) -> Policy:
        return self.stn.policy

    @property
    def weights(self):
        """Every array the model computes with: (STN variables, classifier variables or None).
        Jitted functions take these as an argument (see `with_weights`) rather than closing over
        them, which would bake the weights into the compiled program as constants."""
        return self.variables, None if self.classifier is None else self.classifier.variables

    def with_weights(self, weights) -> AlignmentModel:
        variables, classifier_variables = weights
        classifier = self.classifier
        if classifier is not None:
            classifier = classifier._replace(variables=classifier_variables)
        return self._replace(variables=variables, classifier=classifier)

    @property
    def forward_settings(self) -> dict:
        """The STN keywords its test-time settings ask for (iters, padding, mirror averaging)."""
        return {
            "iters": int(self.test_time["iters"]),
            "padding_mode": self.test_time["padding_mode"],
            "mirror_average": bool(self.test_time.get("mirror_average", False)),
        }

    def congeal(self, images, source_images=None, **overrides):
        """STN output for NHWC images in [-1, 1], with the model's test-time settings."""
        forward = {**self.forward_settings, **overrides}
        return self.stn.apply(self.variables, jnp.asarray(images), source_images, **forward)


def _classifier_bundle(directory: pathlib.Path) -> pathlib.Path | None:
    """The classifier bundle at `directory` or at `directory/classifier`, if there is one."""
    for candidate in (directory, directory / "classifier"):
        if bundle_kind(candidate) == CLASSIFIER_KIND:
            return candidate
    return None


def _trained_for(classifier_dir: pathlib.Path) -> pathlib.Path:
    """The model a classifier was trained for, as its export recorded it."""
    meta = json.loads((classifier_dir / "model.json").read_text())["config"]
    model = meta.get("model")
    if not model or not is_bundle(model):
        raise CheckpointError(
            f"{classifier_dir}: the model it was trained for ({model}) is not there; pass the "
            "model's path and this classifier as classifier="
        )
    return pathlib.Path(model)


def _attach(stn: STN, module: ClusterClassifier, variables, path) -> Classifier:
    heads = stn.config.num_heads
    if module.config.num_heads != heads:
        raise CheckpointError(
            f"{path}: the classifier predicts {module.config.num_heads} clusters, the STN has "
            f"{heads} heads"
        )
    return Classifier(module, variables, str(path))


def _load_classifier(path, stn: STN) -> Classifier:
    config, variables = load_classifier(path, num_heads=stn.config.num_heads)
    return _attach(stn, ClusterClassifier(config, policy=stn.policy), variables, path)


def trained_policy(bundle: pathlib.Path, meta: dict) -> Policy:
    """The policy of the trained model in `bundle` (its model.json config is `meta`)."""
    compute = meta.get("compute")
    source = bundle / "model.json"
    if compute is None:  # exported before the bundle recorded it: the run's config.json
        source = bundle.parent / "config.json"
        try:
            compute = json.loads(source.read_text()).get("compute") or {}
        except (OSError, json.JSONDecodeError):
            compute = {}
    try:
        return policy_from_fields(compute)
    except ValueError as e:
        raise CheckpointError(f"{source}: its compute section has {e}") from None


def _load_reference(
    path: pathlib.Path, module: str, with_classifier: bool, policy: Policy
) -> AlignmentModel:
    """A reference checkpoint, read once for the STN and (when asked and present) its
    classifier."""
    flat = read_checkpoint(path)
    config, variables = stn_variables_from_state(module_state(flat, module, str(path)), str(path))
    model = AlignmentModel(
        STN(config, policy=policy), variables, dict(DEFAULT_TEST_TIME), str(path)
    )
    if not with_classifier or not any(k.startswith(CLASSIFIER_MODULE + "/") for k in flat):
        return model
    state = module_state(flat, CLASSIFIER_MODULE, str(path))
    cls_config, cls_vars = classifier_variables_from_state(state, str(path), config.num_heads)
    return model._replace(
        classifier=_attach(model.stn, ClusterClassifier(cls_config, policy=policy), cls_vars, path)
    )


def load_model(
    path: str | os.PathLike,
    module: str = "t_ema",
    classifier: str | os.PathLike | None = None,
    policy: Policy | None = None,
) -> AlignmentModel:
    """The alignment model at `path`, with its cluster classifier when one is found (see the
    module docstring); `classifier` names one explicitly. `policy`: the numerics to run with
    (None: those it was trained with, float32 for checkpoints that do not record them)."""
    given = os.fspath(path)  # errors name the path as the user typed it
    path = pathlib.Path(path)
    found = None  # a classifier found next to (or instead of) the model
    model_here = path.is_file() or is_bundle(path / "model") or is_bundle(path / module)
    if not model_here and bundle_kind(path) != TRAINED_MODEL_KIND:
        found = _classifier_bundle(path)
        if found is not None:  # a classifier work directory: load the model it names
            path = _trained_for(found)
    if path.is_dir() and not is_bundle(path) and is_bundle(path / "model"):
        path = path / "model"  # a training work directory
    if bundle_kind(path) == TRAINED_MODEL_KIND:
        meta, variables = load_bundle(path, kind=TRAINED_MODEL_KIND)
        test_time = {**DEFAULT_TEST_TIME, **meta.get("test_time", {})}
        stn = STN(stn_config_from_dict(meta["stn"]), policy=policy or trained_policy(path, meta))
        model = AlignmentModel(stn, variables["stn"], test_time, str(path))
        found = found or _classifier_bundle(path.parent / CLASSIFIER_MODULE)
    elif not path.exists():
        raise CheckpointError(f"{given}: no such model; {_MODEL_PATHS}")
    elif path.is_dir() and not is_bundle(path) and not is_bundle(path / module):
        raise CheckpointError(
            f"{given}: holds no model (no model/ or {module}/ bundle); {_MODEL_PATHS}"
        )
    elif path.is_dir():  # a converted checkpoint: one bundle per module
        config, variables = load_stn(path, module=module)
        stn = STN(config, policy=policy or UNRECORDED)
        model = AlignmentModel(stn, variables, dict(DEFAULT_TEST_TIME), str(path))
        found = _classifier_bundle(path / CLASSIFIER_MODULE)
    else:
        model = _load_reference(path, module, classifier is None, policy or UNRECORDED)
    if classifier is not None:
        return model._replace(classifier=_load_classifier(classifier, model.stn))
    if found is not None:
        return model._replace(classifier=_load_classifier(found, model.stn))
    return model
