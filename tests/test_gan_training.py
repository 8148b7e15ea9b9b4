"""StyleGAN2 training: losses, lazy regularisation schedule, exact resume, export, sharding,
checkpoint safety (atomic saves, full disk, SIGTERM, non-finite losses)."""

import errno
import json
import os
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.gan import test as test_config
from gangealing_jax.convert.bundle import unpack_bundle
from gangealing_jax.convert.stylegan2 import load_generator
from gangealing_jax.models.stylegan2 import Generator
from gangealing_jax.training import checkpoints, gan_iteration, gan_loop, generator_export, parallel
from gangealing_jax.training.metrics_log import NonFiniteLossError


def _config(**overrides):
    c = test_config.get_config()
    for key, value in overrides.items():
        c[key] = value
    return c


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    return workdir, gan_loop.train_gan(_config(), workdir)


def test_losses_finite_and_lazy_regularisers_on_their_interval(straight_run):
    workdir, result = straight_run
    config = _config()
    assert result.step == config.steps and not result.interrupted
    records = _records(workdir)
    assert [r["step"] for r in records] == list(range(config.steps))
    for r in records:
        assert all(np.isfinite(v) for v in r.values())
        assert ("r1" in r) == (r["step"] % config.d_reg_every == 0)
        assert ("path" in r) == (r["step"] % config.g_reg_every == 0)
        if "r1" in r:
            assert r["r1"] > 0 and r["path_length"] > 0
    assert int(result.state.step) == config.steps


def test_resume_repeats_the_uninterrupted_run(straight_run, tmp_path):
    _, straight = straight_run
    half = _config(steps=2)
    first = gan_loop.train_gan(half, tmp_path)
    assert first.step == 2
    # As if a crashed run had logged two more iterations past its last checkpoint.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps({"step": s, "d_loss": 9.0}) + "\n" for s in (2, 3))
    resumed = gan_loop.train_gan(_config(), tmp_path)
    assert resumed.step == 4
    _assert_trees_equal(resumed.state, straight.state)
    assert [r["step"] for r in _records(tmp_path)] == [0, 1, 2, 3]
    assert all(r["d_loss"] != 9.0 for r in _records(tmp_path))
    # The jitted steps were traced once for all three runs (equal setups share them).
    setup = gan_loop.build_setup(_config(), parallel.make_mesh())
    steps = gan_iteration.make_steps(setup, fast_compile=True)
    assert all(fn._cache_size() == 1 for fn in steps)


def test_exported_generator_loads_and_generates(straight_run):
    workdir, result = straight_run
    config, variables = load_generator(workdir / "generator")
    assert config.size == 8 and config.style_dim == 8
    _assert_trees_equal(variables["params"], result.state.ema_params)
    z = jax.random.normal(jax.random.PRNGKey(3), (3, config.style_dim))
    images = Generator(config).apply(variables, z, noise_mode="const")
    assert images.shape == (3, 8, 8, 3) and bool(jnp.all(jnp.isfinite(images)))
    w_mean = generator_export.read_mean_latent(workdir / "generator")
    assert w_mean.shape == (1, config.style_dim) and np.all(np.isfinite(w_mean))
    # The packed single-file form (what the package ships) holds the same generator and mean w.
    packed_config, packed = load_generator(workdir / "generator.npz")
    assert packed_config == config
    _assert_trees_equal(packed, variables)
    _, _, extra = unpack_bundle(workdir / "generator.npz", kind="generator")
    np.testing.assert_array_equal(extra["mean_latent"], w_mean)
    assert sorted(os.listdir(workdir / "images")) == [
        "samples_0000000.png",
        "samples_0000002.png",
        "samples_0000004.png",
    ]


def test_sharded_iteration_equals_single_device():
    config = _config()
    setup = gan_loop.build_setup(config, parallel.make_mesh())
    state0 = jax.device_get(gan_loop.init_replicated(setup, jax.random.PRNGKey(5)))
    real = np.random.default_rng(0).integers(0, 256, (config.batch, 8, 8, 3), dtype=np.uint8)
    finals = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devices)
        setup = gan_loop.build_setup(config, mesh)
        # chex guards the single-device steps against retracing; the 8-device ones are shared
        # with the training runs above (and checked there through their cache size).
        chex.clear_trace_counter()
        max_traces = 1 if len(devices) == 1 else None
        steps = gan_iteration.make_steps(
            setup, max_traces=max_traces, fast_compile=config.fast_compile
        )
        state = parallel.replicate(state0, mesh)
        for i in range(2):  # a regularised iteration, then a plain one
            state, metrics = gan_iteration.train_iteration(
                steps, setup, state, parallel.shard_batch(real, mesh), i
            )
        finals.append((jax.device_get(state), jax.device_get(metrics)))
    assert len(jax.devices()) == 8
    (single, m_single), (sharded, m_sharded) = finals
    for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
    for k in m_single:
        np.testing.assert_allclose(m_sharded[k], m_single[k], rtol=1e-5, atol=1e-6)


def test_sigterm_saves_and_stops(tmp_path, monkeypatch):
    requests = iter([False, True])
    monkeypatch.setattr(gan_loop.parallel, "any_process", lambda flag: flag or next(requests))
    result = gan_loop.train_gan(_config(ckpt_every=100), tmp_path)
    assert result.interrupted and result.step == 2
    assert os.listdir(tmp_path / "checkpoints") == ["2"]
    load_generator(tmp_path / "generator")

    with checkpoints.TerminationRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real_iteration = gan_iteration.train_iteration

    def failing(steps, setup, state, real, step):
        state, metrics = real_iteration(steps, setup, state, real, step)
        if step == 2:
            metrics = {**metrics, "g_loss": jnp.float32(np.nan)}
        return state, metrics

    monkeypatch.setattr(gan_loop.gan_iteration, "train_iteration", failing)
    with pytest.raises(NonFiniteLossError, match="step 2.*g_loss=nan"):
        gan_loop.train_gan(_config(), tmp_path)
    assert os.listdir(tmp_path / "checkpoints") == ["2"]


def _tiny_state(value):
    return {"step": jnp.int32(value), "w": jnp.full((4, 4), value, jnp.float32)}


def test_checkpoints_keep_last_restore_latest_and_ignore_partial_saves(tmp_path):
    manager = checkpoints.CheckpointManager(tmp_path, save_every=2, keep=2)
    for step in range(1, 7):
        manager.save(step, _tiny_state(step))
    assert manager.all_steps() == [4, 6]
    manager.close()
    # A save interrupted by a crash leaves only a temporary directory behind.
    partial = tmp_path / "8.orbax-checkpoint-tmp-1234"
    partial.mkdir()
    (partial / "junk").write_text("x")
    manager = checkpoints.CheckpointManager(tmp_path, save_every=2, keep=2)
    assert manager.latest_step() == 6 and not partial.exists()
    restored = manager.restore_latest(_tiny_state(0))
    _assert_trees_equal(restored, _tiny_state(6))
    manager.close()


def test_full_disk_is_reported_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    manager = checkpoints.CheckpointManager(tmp_path, save_every=1, keep=3)
    manager.save(1, _tiny_state(1))

    class Usage:
        free = 1000

    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(checkpoints.CheckpointDiskFullError, match=f"step 2 in {tmp_path}.*MiB"):
        manager.save(2, _tiny_state(2))
    monkeypatch.undo()

    def no_space(*args, **kwargs):
        raise RuntimeError("write failed") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manager._manager, "save", no_space)
    with pytest.raises(checkpoints.CheckpointDiskFullError, match="last good checkpoint \\(step 1"):
        manager.save(3, _tiny_state(3))
    assert manager.all_steps() == [1]
    _assert_trees_equal(manager.restore(_tiny_state(0)), _tiny_state(1))
    manager.close()


def test_batch_indices_cover_each_epoch_once():
    seen = np.concatenate([gan_loop.batch_indices(s, 4, 10, seed=3) for s in range(5)])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    np.testing.assert_array_equal(gan_loop.batch_indices(2, 4, 10, 3), seen[8:12])
