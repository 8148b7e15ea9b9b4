"""The network-pickle reader runs nothing from the file: hostile pickles are refused, no trace left."""

from __future__ import annotations

import contextlib
import os
import pathlib
import pickle
import pickletools
import sys
import types

import numpy as np
import pytest

from gangealing_jax.convert.ada_pickle import PersistentObject, RefusedGlobal, read_network_pickle
from gangealing_jax.convert.ada_snapshot import load_ada_generator
from gangealing_jax.errors import CheckpointError
from tests.golden import REPO_ROOT

FIXTURE = REPO_ROOT.parent / "shared" / "golden_ada" / "ada_generator.pkl"


class _SystemCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_reduce_calling_os_system_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _SystemCall(f"touch {marker}")}))
    with pytest.raises(RefusedGlobal) as err:
        read_network_pickle(path)
    message = str(err.value)
    assert f"'{os.system.__module__}.system'" in message and "\n" not in message
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == ["network-snapshot.pkl"]


@contextlib.contextmanager
def _nvidia_persistence():
    """A stand-in `torch_utils.persistence` that does what NVIDIA's does on load: exec the
    embedded source. Pickles made with it are as dangerous to plain `pickle.load` as real ones."""
    package = types.ModuleType("torch_utils")
    module = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        exec(meta["module_src"], {})  # what persistence does with the embedded source
        return meta["class_name"]

    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    package.persistence = module
    saved = {k: sys.modules.get(k) for k in (package.__name__, module.__name__)}
    sys.modules.update({package.__name__: package, module.__name__: module})
    try:
        yield module
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


class _Persistent:
    def __init__(self, reconstruct, meta):
        self.reconstruct, self.meta = reconstruct, meta

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def test_embedded_source_is_kept_as_text_never_run(tmp_path):
    marker = tmp_path / "written-by-embedded-source"
    source = f"open({str(marker)!r}, 'w').write('pwned')\n"
    meta = dict(type="class", version=6, module_src=source, class_name="Generator", state={})
    path = tmp_path / "network-snapshot.pkl"
    with _nvidia_persistence() as persistence:
        data = pickle.dumps({"G_ema": _Persistent(persistence._reconstruct_persistent_obj, meta)})
        pickle.loads(data)  # the ordinary loader runs the source: the pickle is live
        assert marker.exists()
    marker.unlink()
    path.write_bytes(data)

    snapshot = read_network_pickle(path)
    assert isinstance(snapshot["G_ema"], PersistentObject)
    assert snapshot["G_ema"].source == source
    with pytest.raises(CheckpointError, match="has no sub-module 'synthesis'"):
        load_ada_generator(path)  # recorded as data, and not a network we can build
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == ["network-snapshot.pkl"]


@pytest.mark.parametrize(
    "module, name", [("builtins", "eval"), ("torch", "load"), ("torch._utils", "_rebuild_qtensor")]
)
def test_globals_outside_the_allowlist_are_named(tmp_path, module, name):
    path = tmp_path / "x.pkl"
    path.write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b").R.")
    with pytest.raises(RefusedGlobal, match=f"'{module}.{name}'"):
        read_network_pickle(path)


def _first_storage_blob() -> bytes:
    for op, arg, _ in pickletools.genops(FIXTURE.read_bytes()):
        if op.name == "BINBYTES":
            return arg
    raise AssertionError("no storage in the fixture")


def _body(value) -> bytes:
    """The opcodes that push `value` (a protocol-3 pickle without its header and STOP)."""
    return pickle.dumps(value, protocol=3)[2:-1]


def _tensor_pickle(size, stride, offset=0) -> bytes:
    blob = _first_storage_blob()
    storage = b"ctorch.storage\n_load_from_bytes\n" + _body(blob) + b"\x85R"  # TUPLE1, REDUCE
    args = storage + _body(offset) + _body(size) + _body(stride) + b"\x89" + b"}"  # False, {}
    return b"\x80\x03ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR."


def test_tensor_views_are_rebuilt_and_bounds_checked(tmp_path):
    path = tmp_path / "t.pkl"
    path.write_bytes(_tensor_pickle((4, 8), (8, 1), offset=0))
    # The stored count comes first in the blob's raw data; 512 floats follow in this fixture.
    with pytest.raises(CheckpointError, match="snapshot dict"):
        read_network_pickle(path)  # a bare tensor is not a snapshot, but it was rebuilt
    path.write_bytes(_tensor_pickle((4, 8), (200, 1)))
    with pytest.raises(CheckpointError, match="reads past its storage of 512 elements"):
        read_network_pickle(path)
    path.write_bytes(_tensor_pickle((2,), (1,), offset=-3))
    with pytest.raises(CheckpointError, match="invalid"):
        read_network_pickle(path)


def test_fixture_reads_without_torch_or_nvidia_code():
    blocked = ("torch", "torch_utils", "dnnlib", "training")
    before = set(sys.modules)
    snapshot = read_network_pickle(FIXTURE)
    new = {m.split(".")[0] for m in set(sys.modules) - before}
    assert not new & set(blocked)
    g = snapshot["G_ema"]
    assert g.class_name == "Generator" and "def " in g.source
    weight = g.modules["mapping"].modules["fc0"].params["weight"]
    assert isinstance(weight, np.ndarray) and weight.dtype == np.float32


def test_damaged_pickle_is_one_error(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(FIXTURE.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=str(path)):
        read_network_pickle(pathlib.Path(path))


def test_storage_cut_short_is_one_error(tmp_path):
    blob = _first_storage_blob()
    for cut in (len(blob) - 4, len(blob) - 2052, 40):
        storage = b"ctorch.storage\n_load_from_bytes\n" + _body(blob[:cut]) + b"\x85R."
        path = tmp_path / f"cut{cut}.pkl"
        path.write_bytes(b"\x80\x03" + storage)
        with pytest.raises(CheckpointError, match=str(path)):
            read_network_pickle(path)
