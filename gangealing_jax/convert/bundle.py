"""Converted-model bundles on disk: an orbax checkpoint of the variables plus a `model.json`.

<dir>/model.json   {"kind": "generator", "config": {...}, "format": 1}
<dir>/variables/   orbax StandardCheckpointer tree

A bundle can also be packed into one `.npz` file (`pack_bundle`): the variables flattened to
'/'-joined keys under `variables/`, extra arrays under `extra/`, and model.json's content as a JSON
string under `__bundle__`. That is the form shipped inside the package: one portable file that
needs neither orbax nor any particular version of it to read.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from gangealing_jax import atomic
from gangealing_jax.convert.state_dict import CheckpointError

BUNDLE_FORMAT = 1
TRAINED_MODEL_KIND = "gangealing"  # exported by training: STN, congealing vector, settings


def save_bundle(directory: str | os.PathLike, kind: str, config: dict, variables) -> pathlib.Path:
    """Writes (or replaces) the bundle in `directory`, leaving any other file there alone.

    The new weights are written beside the old ones and swapped in only once complete, so a
    failure midway (a full disk, a kill) leaves the previous bundle loadable.
    """
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    tree = _to_numpy_tree(variables)
    with atomic.staged_directory(directory / "variables") as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp, tree, force=True)  # force: `tmp` exists (empty)
    meta = {"kind": kind, "config": config, "format": BUNDLE_FORMAT}
    atomic.write_text(directory / "model.json", json.dumps(meta, indent=2, sort_keys=True))
    return directory


def is_bundle(path: str | os.PathLike) -> bool:
    return (pathlib.Path(path) / "model.json").is_file()


def bundle_kind(path: str | os.PathLike) -> str | None:
    """The `kind` recorded in a bundle's model.json (None when unreadable)."""
    try:
        return json.loads((pathlib.Path(path) / "model.json").read_text()).get("kind")
    except (OSError, json.JSONDecodeError):
        return None


def load_bundle(directory: str | os.PathLike, kind: str | None = None) -> tuple[dict, dict]:
    """(config dict, variables) of a bundle; checks its kind when `kind` is given."""
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    meta_path = directory / "model.json"
    if not meta_path.is_file():
        raise CheckpointError(
            f"{directory}: not a converted model directory (no model.json); convert a reference "
            "checkpoint with `python -m gangealing_jax.convert IN.pt OUT_DIR`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path}: corrupt model.json ({err})") from err
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{directory}: holds a '{meta.get('kind')}', expected a '{kind}'")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            variables = ckptr.restore(directory / "variables")
    except Exception as err:
        raise CheckpointError(
            f"{directory / 'variables'}: could not restore the weights ({type(err).__name__}: {err})"
        ) from err
    return meta["config"], variables


_PACKED_META = "__bundle__"


def is_packed_bundle(path: str | os.PathLike) -> bool:
    path = pathlib.Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as data:
        return _PACKED_META in data.files


def pack_bundle(path: str | os.PathLike, kind: str, config: dict, variables, extra=None):
    """Write variables (a nested dict of arrays), config and extra arrays into one .npz."""
    from flax.traverse_util import flatten_dict

    arrays = {
        "variables/" + key: np.asarray(value)
        for key, value in flatten_dict(_to_numpy_tree(variables), sep="/").items()
    }
    arrays.update({"extra/" + key: np.asarray(value) for key, value in (extra or {}).items()})
    meta = {"kind": kind, "config": config, "format": BUNDLE_FORMAT}
    arrays[_PACKED_META] = np.asarray(json.dumps(meta, sort_keys=True))
    with atomic.open_for_write(path) as f:
        np.savez_compressed(f, **arrays)
    return pathlib.Path(path)


def unpack_bundle(path: str | os.PathLike, kind: str | None = None):
    """(config, variables, extra) of a packed .npz bundle; checks its kind when given."""
    from flax.traverse_util import unflatten_dict

    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data[_PACKED_META]))
            variables = {
                key[len("variables/") :]: data[key]
                for key in data.files
                if key.startswith("variables/")
            }
            extra = {
                key[len("extra/") :]: data[key] for key in data.files if key.startswith("extra/")
            }
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: not a readable packed model ({err})") from err
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a '{meta.get('kind')}', expected a '{kind}'")
    return meta["config"], unflatten_dict(variables, sep="/"), extra


def _to_numpy_tree(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)
