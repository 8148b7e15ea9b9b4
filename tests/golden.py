"""Reading the reference golden fixtures (see ../shared/golden/README.md).

Every fixture file matching a prefix becomes one pytest case whose id is the file name. A missing
directory or an empty match becomes a failing case, never a skip.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def golden_dir() -> pathlib.Path:
    return pathlib.Path(
        os.environ.get("GANGEALING_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden")
    )


def golden_cases(prefix: str, suffix: str = ".npz") -> list:
    """pytest params, one per `<prefix>*<suffix>` file in the golden directory."""
    directory = golden_dir()
    paths = sorted(directory.glob(f"{prefix}*{suffix}")) if directory.is_dir() else []
    if not paths:
        missing = directory / f"{prefix}*{suffix}"
        return [pytest.param(missing, id=f"MISSING-{prefix}*{suffix}")]
    return [pytest.param(p, id=p.name) for p in paths]


@dataclasses.dataclass
class Fixture:
    path: pathlib.Path
    state: dict
    inputs: dict
    outputs: dict
    meta: dict

    def state_of(self, module: str) -> dict:
        """The `state/<module>/...` sub-dict with the module prefix removed."""
        head = module + "/"
        return {k[len(head) :]: v for k, v in self.state.items() if k.startswith(head)}


def load_fixture(path: pathlib.Path) -> Fixture:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"golden fixture {path} not found: set GANGEALING_GOLDEN_DIR to the fixture directory"
        )
    with np.load(path, allow_pickle=False) as data:
        groups = {"state": {}, "in": {}, "out": {}}
        for key in data.files:
            head, _, name = key.partition("/")
            if head in groups:
                groups[head][name] = data[key]
        meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    return Fixture(path, groups["state"], groups["in"], groups["out"], meta)


def assert_close(actual, expected, *, atol: float = 0.0, rtol: float = 0.0, name: str = ""):
    """|actual - expected| <= atol + rtol * max|expected| everywhere (README: relative to the max)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = (
        float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
        if expected.size
        else 0.0
    )
    bound = atol + rtol * scale
    assert err <= bound, (
        f"{name}: max abs error {err:.3e} > {bound:.3e} (max|expected| {scale:.3e})"
    )


def nchw_to_nhwc(x):
    return np.transpose(np.asarray(x), (0, 2, 3, 1))


def nhwc_to_nchw(x):
    return np.transpose(np.asarray(x), (0, 3, 1, 2))
