"""Loading a trained alignment model for the applications.

Accepted paths: the `model/` bundle a training run exports (or its work directory), a converted
STN bundle, or a reference GANgealing checkpoint (`.pt`, its `t_ema` module).
"""

from __future__ import annotations

import os
import pathlib
from typing import NamedTuple

import jax.numpy as jnp

from gangealing_jax.convert.bundle import TRAINED_MODEL_KIND, bundle_kind, is_bundle, load_bundle
from gangealing_jax.convert.state_dict import CheckpointError
from gangealing_jax.convert.stn import load_stn, stn_config_from_dict
from gangealing_jax.models.stn import STN

# What a reference checkpoint does not record; the reference's application scripts pass these.
DEFAULT_TEST_TIME = {"iters": 1, "padding_mode": "border", "flips": False}


class AlignmentModel(NamedTuple):
    stn: STN
    variables: dict
    test_time: dict  # iters, padding_mode, flips used when congealing real images
    path: str

    @property
    def flow_size(self) -> int:
        return self.stn.config.flow_size

    def congeal(self, images, source_images=None, **overrides):
        """STN output for NHWC images in [-1, 1], with the model's test-time settings."""
        forward = {
            "iters": int(self.test_time["iters"]),
            "padding_mode": self.test_time["padding_mode"],
        }
        forward.update(overrides)
        return self.stn.apply(self.variables, jnp.asarray(images), source_images, **forward)


def load_model(path: str | os.PathLike, module: str = "t_ema") -> AlignmentModel:
    path = pathlib.Path(path)
    if path.is_dir() and not is_bundle(path) and is_bundle(path / "model"):
        path = path / "model"  # a training work directory
    if bundle_kind(path) == TRAINED_MODEL_KIND:
        meta, variables = load_bundle(path, kind=TRAINED_MODEL_KIND)
        test_time = {**DEFAULT_TEST_TIME, **meta.get("test_time", {})}
        stn = STN(stn_config_from_dict(meta["stn"]))
        return AlignmentModel(stn, variables["stn"], test_time, str(path))
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such model; pass a training work directory, its model/ folder, or a "
            "reference GANgealing checkpoint (.pt)"
        )
    config, variables = load_stn(path, module=module)
    return AlignmentModel(STN(config), variables, dict(DEFAULT_TEST_TIME), str(path))
