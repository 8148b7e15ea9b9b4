"""NVIDIA stylegan2-ada-pytorch pickles against NVIDIA's own outputs (../shared/golden_ada/README.md).

Every `.npz` and `.pkl` in GANGEALING_GOLDEN_ADA_DIR (default ../shared/golden_ada) is one case; a
missing or empty directory is a failing case. Sizes and options come from the pickles only.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.convert.ada_pickle import read_network_pickle
from gangealing_jax.convert.stylegan2_ada import (
    discriminator_from_object,
    generator_from_object,
    state_dict,
)
from gangealing_jax.models.discriminator_ada import AdaDiscriminator
from gangealing_jax.models.stylegan2_ada import AdaGenerator
from tests.golden import REPO_ROOT, assert_close


def _dir() -> pathlib.Path:
    default = REPO_ROOT.parent / "shared" / "golden_ada"
    return pathlib.Path(os.environ.get("GANGEALING_GOLDEN_ADA_DIR", default))


def _cases():
    directory = _dir()
    paths = sorted(p for p in directory.glob("*") if p.suffix in (".npz", ".pkl"))
    if not directory.is_dir() or not paths:
        return [pytest.param(directory / "*.npz", id="MISSING-golden_ada")]
    return [pytest.param(p, id=p.name) for p in paths]


def _read(path: pathlib.Path):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"]))
    return arrays, meta


def _network(meta: dict, directory: pathlib.Path):
    """The pickled module the fixture was computed from: snapshot['<key>'] of meta.source_pkl."""
    key = meta["network"].split("'")[1]
    snapshot = read_network_pickle(directory / meta["source_pkl"])
    return key, snapshot[key]


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def _check_state(arrays, prefix: str, obj):
    """Every state_dict tensor of the fixture, bit for bit, as the restricted reader rebuilt it."""
    expected = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    loaded = state_dict(obj)
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def _tolerance(meta, key):
    return meta["suggested_tolerance"][key]["atol"]


def _generator_case(arrays, meta, key, obj):
    _check_state(arrays, f"state/{key}/", obj)
    config, variables = generator_from_object(obj, "fixture", key)
    gen = AdaGenerator(config)
    z = jnp.asarray(arrays["in/z"])
    c = jnp.asarray(arrays["in/c"]) if config.c_dim else None
    cutoff = meta.get("truncation_cutoff")
    mapped = {
        "out/w": (1.0, None),
        "out/w_trunc07": (0.7, None),
        "out/w_trunc07_cutoff": (0.7, cutoff),
    }
    images = {
        "out/img_const": ("out/w", "const"),
        "out/img_none": ("out/w", "none"),
        "out/img_trunc07_const": ("out/w_trunc07", "const"),
    }
    outputs = {k for k in arrays if k.startswith("out/")}
    assert outputs <= set(mapped) | set(images), f"unknown outputs {outputs}"
    assert {"out/w", "out/w_trunc07", "out/img_const", "out/img_none"} <= outputs
    for name in sorted(outputs & set(mapped)):
        psi, cut = mapped[name]
        ws = gen.apply(variables, z, c, psi, cut, method=AdaGenerator.map_ws)
        assert_close(ws, arrays[name], atol=_tolerance(meta, name), name=name)
    for name in sorted(outputs & set(images)):
        source, mode = images[name]
        img = gen.apply(
            variables, jnp.asarray(arrays[source]), mode, method=AdaGenerator.synthesize
        )
        assert_close(img, _nhwc(arrays[name]), atol=_tolerance(meta, name), name=name)


def _discriminator_case(arrays, meta, key, obj):
    _check_state(arrays, f"state/{key}/", obj)
    config, variables = discriminator_from_object(obj, "fixture", key)
    img = jnp.asarray(_nhwc(arrays["in/img"]))
    c = jnp.asarray(arrays["in/c"]) if config.c_dim else None
    logits = AdaDiscriminator(config).apply(variables, img, c)
    assert_close(logits, arrays["out/logits"], atol=_tolerance(meta, "out/logits"), name="logits")


def _pickle_case(path: pathlib.Path):
    """The pickle reads and every generator and discriminator in it converts."""
    snapshot = read_network_pickle(path)
    converted = 0
    for key, obj in snapshot.items():
        name = getattr(obj, "class_name", None)
        if name == "Generator":
            config, variables = generator_from_object(obj, str(path), key)
            assert variables["params"]["synthesis"]
            converted += 1
        elif name == "Discriminator":
            discriminator_from_object(obj, str(path), key)
            converted += 1
    assert converted >= 1, f"{path}: no network found ({sorted(snapshot)})"


@pytest.mark.parametrize("path", _cases())
def test_ada_fixture(path):
    path = pathlib.Path(path)
    assert path.is_file(), f"{path}: no fixtures; set GANGEALING_GOLDEN_ADA_DIR"
    if path.suffix == ".pkl":
        _pickle_case(path)
        return
    arrays, meta = _read(path)
    key, obj = _network(meta, path.parent)
    kind = meta["format"].split("/")[1].split()[0]
    if kind == "generator":
        _generator_case(arrays, meta, key, obj)
    elif kind == "discriminator":
        _discriminator_case(arrays, meta, key, obj)
    else:
        pytest.fail(f"{path}: unknown fixture format {meta['format']!r}")
