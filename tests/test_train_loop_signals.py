"""Ctrl-C stops `python -m gangealing_jax.train` cleanly with a checkpoint; a rerun resumes from it.

SIGTERM (a preemption) reaches the same handler (tests/test_faults.py checks both signals).
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

from gangealing_jax.training.checkpoints import CheckpointManager

REPO = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 240


def _command(workdir, iters):
    return [
        sys.executable, "-m", "gangealing_jax.train", "--config", "configs/test.py",
        "--workdir", str(workdir), f"--config.iters={iters}", "--config.num_devices=1",
        "--config.num_pca_samples=300", "--config.ckpt_every=1000000",
        "--config.vis_every=1000000", "--config.log_every=1",
    ]  # fmt: skip


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_PLATFORMS"] = "cpu"
    # As in conftest.py: compile little, and let the rerun reuse what the first run compiled.
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "gangealing_jax_test_xla_cache"
    )
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _latest_step(workdir) -> int | None:
    with CheckpointManager(workdir / "checkpoints", save_every=1) as ckpts:
        return ckpts.latest_step()


def test_ctrl_c_saves_and_rerun_resumes(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        _command(workdir, 2000), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        metrics = workdir / "metrics.jsonl"
        deadline = time.monotonic() + TIMEOUT_S
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert proc.poll() is None, f"run ended early:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "no progress in metrics.jsonl"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    match = re.search(r"interrupted at iteration (\d+)", output)
    assert match, output[-3000:]
    stopped_at = int(match.group(1))
    assert 0 < stopped_at < 2000
    assert _latest_step(workdir) == stopped_at

    # The rerun restores the checkpoint and runs on to its (smaller) final iteration.
    rerun = subprocess.run(
        _command(workdir, stopped_at + 2), cwd=REPO, env=_env(), capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"finished at iteration {stopped_at + 2}" in rerun.stdout
    assert _latest_step(workdir) == stopped_at + 2
