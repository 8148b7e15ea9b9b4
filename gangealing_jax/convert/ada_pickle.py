"""Reading NVIDIA stylegan2-ada-pytorch network pickles (`network-snapshot-*.pkl`) as plain data.

NVIDIA's `torch_utils.persistence` stores every network as a call that `exec`s the network source
embedded in the pickle, so the ordinary `pickle.load` of an untrusted snapshot runs whatever code
the file carries. This reader never does: pickle can only reach the few globals below, each
replaced by a function of ours that builds data.

- `torch_utils.persistence._reconstruct_persistent_obj(meta)` becomes a `PersistentObject`
  (class name, the module's `__dict__` as state); the embedded source is kept as text, never run.
- `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` become numpy arrays, read from the raw
  storage bytes (`torch.storage._load_from_bytes`: a legacy `torch.save` blob, parsed here with
  the same restricted reader); offsets and strides are checked against the storage size.
- numpy scalars and dtypes (the stored gains are float64 scalars) are rebuilt for numeric dtypes
  only; `collections.OrderedDict` and `dnnlib.util.EasyDict` become dicts.

Any other global (`os.system`, `builtins.exec`, a class of the embedded source, ...) is refused
with one line naming it. Nothing here needs torch.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct

import numpy as np

from gangealing_jax.errors import CheckpointError

# torch's legacy serialisation: a magic number and protocol version open every torch.save blob.
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,  # no numpy dtype: converted from its bit pattern below
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class RefusedGlobal(CheckpointError):
    """The pickle asks for a Python object outside the allowlist."""


@dataclasses.dataclass
class PersistentObject:
    """One NVIDIA persistent network object, recorded instead of rebuilt.

    class_name: e.g. 'Generator'; state: its `nn.Module.__dict__` (`_parameters`, `_buffers`,
    `_modules` hold arrays and nested PersistentObjects); source: the embedded module source
    (text only).
    """

    class_name: str
    state: dict
    source: str = dataclasses.field(default="", repr=False)

    @property
    def params(self) -> dict:
        return dict(self.state.get("_parameters") or {})

    @property
    def buffers(self) -> dict:
        return dict(self.state.get("_buffers") or {})

    @property
    def modules(self) -> dict:
        return dict(self.state.get("_modules") or {})

    def tensor(self, name: str):
        """A parameter or buffer by name (frozen layers keep their weights as buffers)."""
        found = self.params.get(name, self.buffers.get(name))
        return None if found is None else np.asarray(found)


@dataclasses.dataclass
class _StorageRef:
    dtype_name: str
    data: np.ndarray | None = None


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
        kind = meta.get("type") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"persistent object of unsupported type {kind!r}")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise CheckpointError(f"persistent object {meta.get('class_name')!r} has no state dict")
    return PersistentObject(str(meta.get("class_name")), state, str(meta.get("module_src", "")))


def _check_view(numel: int, offset: int, size, stride) -> None:
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise CheckpointError(f"tensor view size {size} stride {stride} offset {offset} is invalid")
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= numel:
            raise CheckpointError(
                f"tensor view size {size} stride {stride} offset {offset} reads past its "
                f"storage of {numel} elements"
            )


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, _StorageRef) or storage.data is None:
        raise CheckpointError("tensor without a readable storage")
    flat = storage.data
    _check_view(flat.size, int(storage_offset), size, stride)
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[int(storage_offset) :],
        shape=tuple(int(s) for s in size),
        strides=tuple(int(s) * item for s in stride),
        writeable=False,
    )
    return np.array(view)  # a copy: no view into the storage survives


def _rebuild_parameter(data, *_ignored):
    return data


def _numpy_dtype(name, *args):
    dtype = np.dtype(name)
    if dtype.kind not in "biufc":
        raise RefusedGlobal(f"numpy dtype {dtype!r} (only numeric dtypes are read)")
    return dtype


def _numpy_scalar(dtype, raw=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(raw, bytes):
        raise RefusedGlobal("numpy scalar of a non-numeric dtype (only numbers are read)")
    return np.frombuffer(raw, dtype=dtype, count=1)[0]


class _EasyDict(dict):
    """`dnnlib.util.EasyDict` read as the plain dict it is."""


class _StorageType:
    def __init__(self, name):
        self.name = name


def _refuse(module: str, name: str):
    return RefusedGlobal(
        f"refused to load '{module}.{name}': a network pickle needs only tensors, numbers, dicts "
        "and NVIDIA persistent objects, and loading anything else could run code from the file"
    )


class _StorageReader(pickle.Unpickler):
    """One of the small pickles inside a legacy torch.save blob: storage types and plain data."""

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _refuse(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected storage record {str(pid)[:80]}")
        storage_type, key = pid[1], pid[2]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"storage of unknown type {storage_type!r}")
        return key, _StorageRef(storage_type.name)


def _load_storage_bytes(blob):
    """torch.storage._load_from_bytes: magic, protocol, sys info, the storage, its keys, raw data."""
    if not isinstance(blob, bytes):
        raise CheckpointError("storage record is not bytes")
    f = io.BytesIO(blob)
    magic = _StorageReader(f).load()
    protocol = _StorageReader(f).load()
    sys_info = _StorageReader(f).load()
    if magic != _TORCH_MAGIC or protocol != _TORCH_PROTOCOL:
        raise CheckpointError("storage record is not a legacy torch.save blob")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError("big-endian tensor storage is not supported")
    key, ref = _StorageReader(f).load()
    keys = _StorageReader(f).load()
    if list(keys) != [key]:
        raise CheckpointError("storage record holds other than one storage")
    (count,) = struct.unpack("<q", f.read(8))
    dtype = _STORAGE_DTYPES[ref.dtype_name]
    item = 2 if dtype is None else np.dtype(dtype).itemsize
    raw = f.read(count * item)
    if count < 0 or len(raw) != count * item:
        raise CheckpointError("storage record is cut short")
    if dtype is None:  # bfloat16: the high half of a float32
        bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
        ref.data = bits.view(np.float32)
    else:
        ref.data = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).astype(dtype)
    return ref


class _Reader(pickle.Unpickler):
    """The outer snapshot pickle: only the allowlist reaches `find_class`."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy 1 pickles
        ("numpy", "dtype"): _numpy_dtype,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        (
            "torch._utils",
            "_rebuild_parameter_with_state",
        ): _rebuild_parameter,  # extra state dropped
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    }

    def find_class(self, module, name):
        found = self._ALLOWED.get((module, name))
        if found is None:
            raise _refuse(module, name)
        return found

    def persistent_load(self, pid):
        raise CheckpointError("unexpected persistent id in a network pickle")


def read_network_pickle(path: str | os.PathLike):
    """The snapshot dict (`G`, `D`, `G_ema`, ... as PersistentObjects) of an NVIDIA `.pkl`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such network pickle")
    try:
        with open(path, "rb") as f:
            data = _Reader(f).load()
    except CheckpointError as err:
        raise type(err)(f"{path}: {err}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        struct.error,
    ) as err:
        raise CheckpointError(
            f"{path}: not a readable network pickle ({type(err).__name__}: {err}); is the file "
            "complete?"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a snapshot dict, found {type(data).__name__}")
    return data


def is_network_pickle(path: str | os.PathLike) -> bool:
    return os.fspath(path).endswith(".pkl")
