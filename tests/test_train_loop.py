"""The training loop end to end: outputs, exact resume, and a non-finite loss keeping checkpoints."""

import json

import jax
import numpy as np
import pytest

from configs import test as test_config
from gangealing_jax.convert.bundle import load_bundle
from gangealing_jax.data.prepared import write_procedural_dataset
from gangealing_jax.data.procedural import ProceduralConfig
from gangealing_jax.training.checkpoints import CheckpointManager
from gangealing_jax.training.gangealing_loop import train
from gangealing_jax.training.metrics_log import NonFiniteLossError


def _config(iters):
    c = test_config.get_config()
    c.iters = iters
    c.num_pca_samples = 500
    c.num_devices = 1
    return c


def test_run_resume_equals_uninterrupted_and_nan_keeps_checkpoints(tmp_path):
    write_procedural_dataset(tmp_path / "real", 8, seed=0, config=ProceduralConfig(resolution=32))
    config = _config(8)
    config.real_data_path = str(tmp_path / "real")  # 32x32 real images, flow_size 16
    whole = train(config, tmp_path / "whole")
    assert whole.step == 8 and not whole.interrupted
    for name in ("config.json", "metrics.jsonl", "final_metrics.json", "congealing_init.npz"):
        assert (tmp_path / "whole" / name).is_file(), name
    for name in ("samples_congealed", "samples_target", "real_congealed", "real_average"):
        assert list((tmp_path / "whole" / "images").glob(f"{name}_*.png")), name
    assert list((tmp_path / "whole" / "tensorboard").iterdir())
    records = [json.loads(line) for line in open(tmp_path / "whole" / "metrics.jsonl")]
    assert [r["step"] for r in records][-1] == 8 and all(np.isfinite(r["loss"]) for r in records)
    # The collapse monitor's statistics are logged for every config; an 8-iteration run of an
    # untrained STN (the identity) is healthy and says so.
    assert all(0 < r["collapse_zoom_out"] < 3 and r["collapse_outside"] < 0.5 for r in records)
    report = json.loads((tmp_path / "whole" / "collapse.json").read_text())
    assert report["warning"] is False and report == whole.collapse
    assert report["last"]["collapse_zoom_out"] == pytest.approx(records[-1]["collapse_zoom_out"])

    train(_config(4), tmp_path / "split")
    resumed = train(_config(8), tmp_path / "split")
    assert resumed.step == 8
    _, whole_model = load_bundle(whole.model_dir, kind="gangealing")
    meta, resumed_model = load_bundle(resumed.model_dir, kind="gangealing")
    assert meta["step"] == 8 and meta["test_time"]["iters"] == 1
    # The export records the run's numerics, which the applications then compute with.
    assert meta["compute"] == {"dtype": "float32", "matmul_precision": "auto", "kernels": "auto"}
    jax.tree.map(np.testing.assert_array_equal, whole_model, resumed_model)

    # A NaN in the loss stops the run at its first check (iteration 9, a zero-lr iteration) with the
    # documented message; the checkpoints stay as they were.
    bad = _config(12)
    bad.tv_weight = float("nan")
    ckpt_dir = tmp_path / "split" / "checkpoints"
    before = sorted(p.name for p in ckpt_dir.iterdir())
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite metric at step 9 .*last good checkpoint"
    ):
        train(bad, tmp_path / "split")
    assert sorted(p.name for p in ckpt_dir.iterdir()) == before
    with CheckpointManager(ckpt_dir, save_every=4) as ckpts:
        assert ckpts.latest_step() == 8
