"""Reading reference checkpoints (torch `.pt` or `.npz` with the same keys) as numpy state dicts.

A checkpoint is untrusted input: `.pt` files are opened with `weights_only=True`, so no arbitrary
object is ever unpickled. A file that needs more (pickled Python objects) is refused, and torch's
own advice to retry with `weights_only=False`, which would run code from the file, is not passed on.
"""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from collections.abc import Mapping

import numpy as np

from gangealing_jax.errors import CheckpointError


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().float().numpy() if value.is_floating_point() else value.numpy()
    return np.asarray(value)


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def _read_torch(path: str) -> dict:
    try:
        import torch
    except ImportError as err:
        raise CheckpointError(
            f"{path}: reading .pt checkpoints needs PyTorch; install it with "
            "`pip install 'gangealing_jax[torch]'`, or convert the file to .npz elsewhere"
        ) from err
    try:
        # The reference saves its training flags (`args`, an argparse.Namespace) beside the state
        # dicts. A Namespace only holds data: allowing that one class keeps official
        # checkpoints readable without letting anything else be unpickled.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's text suggests weights_only=False: that would execute code from the file.
        raise CheckpointError(
            f"{path}: not a plain tensor checkpoint (it holds pickled Python objects), refused "
            "for safety: unpickling those can run code from the file. Re-save its state dicts "
            "as tensors only (torch.save({'g_ema': g_ema.state_dict(), ...})) where it was made"
        ) from None
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}). Is the file "
            "complete? Re-download it, or re-save it with torch.save."
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of state dicts, found {type(obj).__name__}")
    return obj


def _read_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise CheckpointError(
            f"{path}: not a readable .npz checkpoint ({type(err).__name__}: {err}). "
            "Is the file complete?"
        ) from err


def read_checkpoint(path: str | os.PathLike) -> dict:
    """All tensors in a checkpoint as a flat dict `'<module>/<key>' -> np.ndarray`.

    `.pt`: `{'g_ema': state_dict, 't_ema': ..., ...}` becomes `'g_ema/<key>'`; non-tensor entries
    (step counters, args) are dropped. `.npz`: keys are taken as they are (`g_ema/<key>` or
    `state/g_ema/<key>` fixture layout, whose `state/` prefix is removed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.endswith(".npz"):
        raw = _read_npz(path)
        flat = {}
        for key, value in raw.items():
            if key.startswith("state/"):
                key = key[len("state/") :]
            elif key.startswith(("in/", "out/")) or key == "meta":
                continue
            flat[key] = value
        return flat
    flat = {}
    for key, value in _flatten(_read_torch(path)).items():
        if hasattr(value, "detach") or isinstance(value, np.ndarray):
            flat[key] = _to_numpy(value)
    return flat


def module_state(flat: Mapping[str, np.ndarray], module: str, path: str = "") -> dict:
    """The tensors of one module (`g_ema`, `t_ema`, ...) with its prefix removed."""
    head = module + "/"
    state = {k[len(head) :]: v for k, v in flat.items() if k.startswith(head)}
    if not state:
        found = sorted({k.split("/", 1)[0] for k in flat if "/" in k})
        raise CheckpointError(
            f"{path or 'checkpoint'}: no '{module}' weights found (modules present: "
            f"{', '.join(found) or 'none'})"
        )
    check_finite(state, f"{path or 'checkpoint'} ({module})")
    return state


def check_finite(state: Mapping[str, np.ndarray], where: str) -> None:
    """Refuses NaN or infinite weights, naming the first key that holds any (a diverged run's
    checkpoint converts without complaint otherwise, and fails much later as a NaN loss)."""
    for key, value in state.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise CheckpointError(
                f"{where}: key '{key}' holds {bad} non-finite values (NaN or inf); the weights "
                "are damaged or come from a diverged run: use an earlier checkpoint"
            )


def take(state: Mapping[str, np.ndarray], key: str, shape=None, path: str = "") -> np.ndarray:
    """state[key], with a clear error naming the file, the key and the expected shape."""
    if key not in state:
        raise CheckpointError(f"{path or 'checkpoint'}: missing key '{key}'")
    value = np.asarray(state[key])
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise CheckpointError(
            f"{path or 'checkpoint'}: key '{key}' has shape {tuple(value.shape)}, "
            f"expected {tuple(shape)}"
        )
    return value


def conv_weight_to_hwio(w: np.ndarray) -> np.ndarray:
    """torch (out, in, kh, kw) or modulated (1, out, in, kh, kw) -> (kh, kw, in, out)."""
    if w.ndim == 5:
        w = w[0]
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def linear_weight_to_io(w: np.ndarray) -> np.ndarray:
    """torch (out, in) -> (in, out)."""
    return np.ascontiguousarray(w.T)


def conv_layer_key(module: str, leaf: tuple[str, ...], downsample: bool) -> tuple[str, str]:
    """Flax ConvLayer leaf -> (torch key, layout). The torch ConvLayer is a Sequential that starts
    with its Blur when downsampling, so the conv and activation indices shift by one."""
    offset = 1 if downsample else 0
    if leaf == ("conv", "weight"):
        return f"{module}.{offset}.weight", "conv"
    if leaf == ("conv", "bias"):
        return f"{module}.{offset}.bias", "plain"
    if leaf == ("act", "bias"):
        return f"{module}.{offset + 1}.bias", "plain"
    raise KeyError(leaf)
