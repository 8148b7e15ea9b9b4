"""The quickstart notebook runs top to bottom with tiny sizes and writes its outputs."""

import json
import os
import pathlib

import nbformat
import numpy as np
from nbclient import NotebookClient

from gangealing_jax.data import procedural

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"
TINY = {"ITERS": 2, "BATCH": 2, "PCA_SAMPLES": 256, "N_IMAGES": 8, "N_PAIRS": 8, "N_SHOW": 4}


def _kernel_env(cache_dir) -> dict:
    """A one-device CPU kernel (as on a laptop), compiling as the test session does."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir))
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    return env


def test_quickstart_notebook_runs_and_writes_its_outputs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    for name in TINY:  # every size the test shrinks is a parameter of that cell
        assert f"\n{name} = " in "\n" + nb.cells[index].source
    out = tmp_path / "out"
    values = {**TINY, "WORKDIR": str(out), "OFFICIAL_CHECKPOINT": str(tmp_path / "absent.pt")}
    injected = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(injected))
    cache = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "gangealing_jax_test_xla_cache"
    client = NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=_kernel_env(cache))  # raises CellExecutionError on the first failing cell

    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "not found: download it" in text  # the official-checkpoint section stood aside
    assert (out / "run" / "model" / "model.json").is_file()
    average = np.load(out / "average.npy")
    assert average.shape == (64, 64, 3) and np.all(np.abs(average) <= 1)
    transferred = np.load(out / "transferred_points.npy")
    assert transferred.shape == (procedural.NUM_KEYPOINTS, 2) and np.all(np.isfinite(transferred))
    pck = json.loads((out / "pck.json").read_text())
    assert set(pck) == {"stn", "identity"}
    assert all(0 <= v <= 1 for report in pck.values() for v in report.values())
    propagated = np.load(out / "propagated.npy")
    faces = np.load(out / "eval_data" / "images.npy")[: TINY["N_SHOW"]]
    assert propagated.shape == faces.shape and propagated.dtype == np.uint8
    assert np.any(propagated != faces)  # the edit left its mark
