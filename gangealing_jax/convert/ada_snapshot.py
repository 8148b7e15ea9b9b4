"""Loading and converting whole NVIDIA snapshots (`network-snapshot-*.pkl`): G_ema, G and D.

config, variables = load_ada_generator("network-snapshot-000200.pkl")   # G_ema
convert_network_pickle("network-snapshot-000200.pkl", "weights/cat")     # g_ema, g, d bundles
"""

from __future__ import annotations

import dataclasses
import os

from gangealing_jax.convert.ada_pickle import PersistentObject, read_network_pickle
from gangealing_jax.convert.bundle import is_bundle, load_bundle, save_bundle
from gangealing_jax.convert.stylegan2_ada import discriminator_from_object, generator_from_object
from gangealing_jax.errors import CheckpointError
from gangealing_jax.models.discriminator_ada import discriminator_config_from_dict
from gangealing_jax.models.stylegan2_ada import AdaGeneratorConfig, spec_from_dict

ADA_GENERATOR_KIND = "ada_generator"
ADA_DISCRIMINATOR_KIND = "ada_discriminator"
GENERATOR_KEYS = ("G_ema", "G")  # G_ema is the generator to use
DISCRIMINATOR_KEYS = ("D",)


def _pick(snapshot: dict, keys, path: str, what: str):
    for key in keys:
        if isinstance(snapshot.get(key), PersistentObject):
            return key, snapshot[key]
    found = ", ".join(sorted(str(k) for k in snapshot)) or "none"
    raise CheckpointError(
        f"{path}: no {what} ({' or '.join(keys)}) in this pickle (found: {found})"
    )


def load_ada_generator(path: str | os.PathLike, module: str | None = None):
    """(AdaGeneratorConfig, variables) of `G_ema` (or `module`: 'G', or 'g_ema' / 'g') in a
    network pickle."""
    path = os.fspath(path)
    snapshot = read_network_pickle(path)
    key = snapshot_key(module)
    keys = (key,) if key and key in snapshot else GENERATOR_KEYS
    where, obj = _pick(snapshot, keys, path, "generator")
    return generator_from_object(obj, path, where)


def load_ada_discriminator(path: str | os.PathLike):
    """(AdaDiscriminatorConfig, variables) of `D` in a network pickle, or of a converted bundle
    (the directory `convert` wrote, or its `d` bundle)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not is_bundle(path):
            path = os.path.join(path, SNAPSHOT_MODULES["D"])
        config, variables = load_bundle(path, kind=ADA_DISCRIMINATOR_KIND)
        return discriminator_config_from_dict(config), variables
    where, obj = _pick(read_network_pickle(path), DISCRIMINATOR_KEYS, path, "discriminator")
    return discriminator_from_object(obj, path, where)


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


# The project's module names for a snapshot's networks (as in reference checkpoints).
SNAPSHOT_MODULES = {"G_ema": "g_ema", "G": "g", "D": "d"}


def snapshot_key(module: str | None) -> str | None:
    """'g_ema' -> 'G_ema' (the snapshot's own keys are accepted as they are)."""
    inverse = {v: k for k, v in SNAPSHOT_MODULES.items()}
    return inverse.get(module, module)


def generator_config_from_dict(d: dict) -> AdaGeneratorConfig:
    return spec_from_dict(AdaGeneratorConfig, d)


def convert_network_pickle(path, out_dir, modules=None) -> dict:
    """Bundles of a snapshot's networks -> {module: (kind, directory)} (see convert/__main__)."""
    path = os.fspath(path)
    snapshot = read_network_pickle(path)
    present = [k for k in SNAPSHOT_MODULES if isinstance(snapshot.get(k), PersistentObject)]
    wanted = [snapshot_key(m) for m in modules] if modules else present
    converted = []
    for key in wanted:  # everything is built before anything is written
        if key not in present:
            raise CheckpointError(
                f"{path}: no network '{key}' (found: {', '.join(present) or 'none'})"
            )
        if snapshot[key].class_name == "Discriminator":
            config, variables = discriminator_from_object(snapshot[key], path, key)
            converted.append((key, ADA_DISCRIMINATOR_KIND, config, variables))
        else:
            config, variables = generator_from_object(snapshot[key], path, key)
            converted.append((key, ADA_GENERATOR_KIND, config, variables))
    written = {}
    for key, kind, config, variables in converted:
        module = SNAPSHOT_MODULES.get(key, key)
        target = os.path.join(os.fspath(out_dir), module)
        save_bundle(target, kind, config_to_dict(config), variables)
        written[module] = (kind, target)
    return written
