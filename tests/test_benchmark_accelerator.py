"""`python -m benchmarks.accelerator --tiny` runs on the CPU and prints one JSON line per mode."""

import json

from benchmarks import accelerator


def test_tiny_run_prints_float32_and_bfloat16_records(capsys):
    accelerator.main(["--tiny"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    steps = {r["mode"]: r for r in records if r["benchmark"] == "accelerator/train_step"}
    assert set(steps) == {"float32-highest", "bfloat16"}
    f32, bf16 = steps["float32-highest"], steps["bfloat16"]
    assert f32["images_per_s"] > 0 and f32["compile_s"] > 0 and f32["flops_per_step"] > 0
    assert f32["batch"] == bf16["batch"] == 4
    assert "images_per_s" not in bf16  # --tiny times the step in one mode only
    # Deviations are measured against float32-highest: zero for itself, small but not zero for
    # bfloat16 (which rounds every convolution's inputs to 8 significant bits).
    assert f32["rel_dev_loss"] == 0.0 and f32["rel_dev_grad_stn"] == 0.0
    assert 0.0 < bf16["rel_dev_perceptual"] < 0.1
    assert 0.0 < bf16["rel_dev_grad_stn"] < 1.0
    forward = {
        (r["benchmark"], r["mode"]) for r in records if r["benchmark"] != "accelerator/train_step"
    }
    assert forward == {
        (f"accelerator/{name}", mode)
        for name in ("stn_flip", "generator")
        for mode in ("float32-highest", "bfloat16")
    }
