"""Faults a long run meets: damaged checkpoints, interrupted exports, stale caches, crashes,
Ctrl-C. Each test injects one and checks that the run keeps (or recovers) its work."""

import json
import os
import pathlib
import shutil
import signal

import jax
import numpy as np
import pytest

from configs import test as test_config
from gangealing_jax import atomic
from gangealing_jax.convert.bundle import load_bundle, save_bundle
from gangealing_jax.training import gangealing_loop
from gangealing_jax.training.checkpoint_integrity import MANIFEST
from gangealing_jax.training.checkpoints import CheckpointManager, TerminationRequest
from gangealing_jax.training.gangealing_setup import build_run
from gangealing_jax.training.metrics_log import MetricsWriter, truncate_metrics


def _state(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {
        "step": np.int32(step),
        "params": {"w": rng.normal(size=(64, 64)).astype(np.float32), "b": np.zeros(3)},
    }


def _largest_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST]
    return max(files, key=lambda p: p.stat().st_size)


def _truncate(step_dir):
    path = _largest_file(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bit(step_dir):
    path = _largest_file(step_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _drop_metadata(step_dir):
    (step_dir / "_CHECKPOINT_METADATA").unlink()


def _empty(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


@pytest.mark.parametrize(
    "damage, kind, words",
    [
        (_truncate, "truncated", "is truncated"),
        (_flip_bit, "checksum", "fails its checksum"),
        (_drop_metadata, "metadata", "_CHECKPOINT_METADATA is missing"),
        (_empty, "empty", "step folder is empty"),
    ],
)
def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_restored(
    tmp_path, capsys, damage, kind, words
):
    ckpt_dir = tmp_path / "checkpoints"
    with CheckpointManager(ckpt_dir, save_every=1) as ckpts:
        ckpts.save(4, _state(4))
        ckpts.save(8, _state(8))
    damage(ckpt_dir / "8")
    with CheckpointManager(ckpt_dir, save_every=1) as ckpts:
        restored = ckpts.restore_latest(_state(0))
        assert ckpts.all_steps() == [4]
    # Exactly the step-4 state, bit for bit.
    assert int(restored["step"]) == 4
    np.testing.assert_array_equal(restored["params"]["w"], _state(4)["params"]["w"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("checkpoint step 8 ")
    assert words in lines[0] and "trying step 4" in lines[0]
    assert (ckpt_dir / "damaged" / f"8-{kind}").is_dir()  # kept, not deleted


def test_checkpoint_without_manifest_still_restores(tmp_path):
    """Checkpoints written before manifests existed load as before (orbax's read is the check)."""
    ckpt_dir = tmp_path / "checkpoints"
    with CheckpointManager(ckpt_dir, save_every=1) as ckpts:
        ckpts.save(4, _state(4))
    (ckpt_dir / "4" / MANIFEST).unlink()
    with CheckpointManager(ckpt_dir, save_every=1) as ckpts:
        restored = ckpts.restore_latest(_state(0))
    np.testing.assert_array_equal(restored["params"]["w"], _state(4)["params"]["w"])


def _tiny_tree(value: float) -> dict:
    return {"layer": {"kernel": np.full((4, 4), value, np.float32), "bias": np.zeros(4)}}


def test_export_interrupted_midway_keeps_the_old_one_loadable(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    save_bundle(tmp_path / "model", "generator", {"size": 1}, _tiny_tree(1.0))
    real_save = ocp.StandardCheckpointer.save

    def save_then_fail(self, path, *args, **kwargs):  # the disk fills up after the data
        real_save(self, path, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", save_then_fail)
    with pytest.raises(OSError, match="No space"):
        save_bundle(tmp_path / "model", "generator", {"size": 2}, _tiny_tree(2.0))
    with pytest.raises(OSError, match="No space"), atomic.staged_directory(tmp_path / "model"):
        save_bundle(tmp_path / "model.tmp", "generator", {"size": 2}, _tiny_tree(2.0))
    monkeypatch.undo()
    config, variables = load_bundle(tmp_path / "model", kind="generator")
    assert config == {"size": 1}
    np.testing.assert_array_equal(variables["layer"]["kernel"], np.ones((4, 4)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporaries left


def test_text_written_atomically_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = atomic.write_text(tmp_path / "config.json", "old")
    with pytest.raises(RuntimeError), atomic.open_for_write(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_directory_swap_interrupted_between_renames_is_recovered(tmp_path):
    target = tmp_path / "model"
    with atomic.staged_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
    _, old = atomic.staging_paths(target)
    target.rename(old)  # a crash after the first rename of the next swap
    with atomic.staged_directory(target) as tmp:
        assert (target / "weights").read_text() == "v1"  # moved back before the new write
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2" and not old.exists()


def _setup_config(ndirs: int, heads: int):
    c = test_config.get_config()
    c.ndirs, c.num_heads, c.num_pca_samples = ndirs, heads, 300
    return c


def test_stale_congealing_cache_is_ignored_and_recomputed(tmp_path, capsys):
    cache = tmp_path / "congealing_init.npz"
    # As written by an earlier run asking for 5 directions and 3 heads, before caches had keys.
    dim = test_config.get_config().generator.random_style_dim
    np.savez(cache, directions=np.zeros((5, dim)), lat_mean=np.zeros((1, dim)),
             coefficients=np.zeros((3, 5)))  # fmt: skip
    _, state = build_run(_setup_config(2, 1), jax.random.PRNGKey(0), cache)
    assert state.params["congealing"]["coefficients"].shape == (1, 2)
    assert "ignoring" in capsys.readouterr().err
    with np.load(cache) as data:
        assert data["directions"].shape == (2, dim)

    # Reused as it is when the settings match; ignored, naming the field, when ndirs changes.
    _, again = build_run(_setup_config(2, 1), jax.random.PRNGKey(0), cache)
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(
        again.params["congealing"]["coefficients"], state.params["congealing"]["coefficients"]
    )
    _, other = build_run(_setup_config(3, 1), jax.random.PRNGKey(0), cache)
    assert other.params["congealing"]["coefficients"].shape == (1, 3)
    assert "ndirs 2 (now 3)" in capsys.readouterr().err


def test_metrics_past_the_restored_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7)))
    with open(path, "a") as f:
        f.write('{"step": 7, "lo')  # cut short by the crash
    writer = MetricsWriter(tmp_path, last_step=4)
    writer.scalars(5, {"loss": 0.5})
    writer.close()
    assert [json.loads(line)["step"] for line in open(path)] == [1, 2, 3, 4, 5]
    assert truncate_metrics(path, 5) == 0


def test_sigint_requests_a_save_and_a_second_one_exits():
    for sig in (signal.SIGTERM, signal.SIGINT):
        before = signal.getsignal(sig)
        with TerminationRequest() as stop:
            assert not stop.requested
            try:
                os.kill(os.getpid(), sig)
            except KeyboardInterrupt:
                pytest.fail("SIGINT was not caught: Ctrl-C would end the run without saving")
            assert stop.requested
            if sig == signal.SIGINT:  # the next Ctrl-C takes the default action: exit at once
                assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
        assert signal.getsignal(sig) is before  # the caller's handler is back


def _loop_config(iters):
    c = test_config.get_config()
    c.iters, c.num_pca_samples, c.num_devices = iters, 300, 1
    c.ckpt_every, c.log_every, c.vis_every = 2, 1, 1_000_000
    return c


def test_crash_then_damaged_checkpoint_resumes_from_the_previous_with_ordered_metrics(
    tmp_path, monkeypatch, capsys
):
    """A run crashes at iteration 7 (checkpoints 2, 4, 6 written, metrics 1..6 logged); then the
    newest checkpoint is found cut short. The rerun resumes from 4 and its logs read 1..8."""
    real_make = gangealing_loop.make_train_step

    def crashing_make(*args, **kwargs):
        step_fn = real_make(*args, **kwargs)

        def step(state, *rest):
            if int(state.step) == 6:
                raise RuntimeError("simulated crash")
            return step_fn(state, *rest)

        return step

    workdir = tmp_path / "run"
    monkeypatch.setattr(gangealing_loop, "make_train_step", crashing_make)
    with pytest.raises(RuntimeError, match="simulated crash"):
        gangealing_loop.train(_loop_config(8), workdir)
    monkeypatch.setattr(gangealing_loop, "make_train_step", real_make)
    _truncate(workdir / "checkpoints" / "6")
    capsys.readouterr()

    result = gangealing_loop.train(_loop_config(8), workdir)
    assert result.step == 8 and not result.interrupted
    assert "checkpoint step 6 " in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
    assert steps == list(range(1, 9))
    assert (workdir / "checkpoints" / "damaged" / "6-truncated").is_dir()

    # Resumed from the older checkpoint, the run still ends exactly as one that never stopped.
    whole = gangealing_loop.train(_loop_config(8), tmp_path / "whole")
    _, expected = load_bundle(whole.model_dir, kind="gangealing")
    _, resumed = load_bundle(result.model_dir, kind="gangealing")
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(x, y)
