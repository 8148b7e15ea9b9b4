"""Convert every known module of a reference checkpoint into bundles (see convert/__main__)."""

from __future__ import annotations

import importlib
import os
import pathlib

from gangealing_jax.convert.ada_pickle import is_network_pickle
from gangealing_jax.convert.ada_snapshot import convert_network_pickle
from gangealing_jax.convert.bundle import save_bundle
from gangealing_jax.convert.state_dict import CheckpointError, module_state, read_checkpoint
from gangealing_jax.convert.stylegan2 import (
    config_to_dict,
    discriminator_variables_from_state,
    generator_variables_from_state,
)

GENERATOR_MODULES = ("g_ema", "g")
DISCRIMINATOR_MODULES = ("d",)
STN_MODULES = ("t_ema", "t")
CLASSIFIER_MODULES = ("classifier",)  # train_cluster_classifier.py checkpoints


def _stn_converter():
    # The STN converter lives beside this one; imported lazily so generator-only use stays light.
    return importlib.import_module("gangealing_jax.convert.stn")


def _convert_classifier(flat, state, path):
    """(kind, meta, variables) of a cluster classifier; its K comes from the checkpoint's STN."""
    classifiers = importlib.import_module("gangealing_jax.convert.cluster_classifier")
    stn_state = module_state(flat, "t_ema", path)  # names the STN when it is missing
    num_heads = _stn_converter().stn_config_from_state(stn_state, path).num_heads
    config, variables = classifiers.classifier_variables_from_state(state, path, num_heads)
    meta = {
        "classifier": classifiers.classifier_config_to_dict(config),
        "num_heads": config.num_heads,
        "flips": config.flips,
    }
    return classifiers.CLASSIFIER_KIND, meta, variables


def convert_checkpoint(path, out_dir, modules=None, lr_mlp: float = 0.01) -> dict:
    """Convert `modules` (default: all known ones present) -> {module: (kind, bundle dir)}."""
    path = os.fspath(path)
    if is_network_pickle(path):  # NVIDIA stylegan2-ada-pytorch snapshot
        return convert_network_pickle(path, out_dir, modules)
    flat = read_checkpoint(path)
    present = sorted({k.split("/", 1)[0] for k in flat if "/" in k})
    known = GENERATOR_MODULES + DISCRIMINATOR_MODULES + STN_MODULES + CLASSIFIER_MODULES
    if modules is None:
        modules = [m for m in present if m in known]
        if not modules:
            raise CheckpointError(
                f"{path}: no known modules (found: {', '.join(present) or 'none'}; "
                f"known: {', '.join(known)})"
            )
    written = {}
    for module in modules:
        state = module_state(flat, module, path)
        target = pathlib.Path(out_dir) / module
        if module in GENERATOR_MODULES:
            config, variables = generator_variables_from_state(state, path, lr_mlp)
            kind = "generator"
            config_dict = config_to_dict(config)
        elif module in DISCRIMINATOR_MODULES:
            config, variables = discriminator_variables_from_state(state, path)
            kind = "discriminator"
            config_dict = config_to_dict(config)
        elif module in STN_MODULES:
            stn = _stn_converter()
            config, variables = stn.stn_variables_from_state(state, path)
            kind = "stn"
            config_dict = stn.stn_config_to_dict(config)
        elif module in CLASSIFIER_MODULES:
            kind, config_dict, variables = _convert_classifier(flat, state, path)
        else:
            raise CheckpointError(f"{path}: don't know how to convert module '{module}'")
        save_bundle(target, kind, config_dict, variables)
        written[module] = (kind, str(target))
    return written
