"""Learned directions (Voynov & Babenko): constraints, learning on the shipped generator, the
sharded step, exact resume and the command line."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.directions import default as default_config
from configs.directions import test as test_config
from gangealing_jax.models.direction_discovery import DirectionMatrix
from gangealing_jax.training.checkpoints import CheckpointManager
from gangealing_jax.training.directions import load_directions
from gangealing_jax.training.directions_loop import setup_run
from gangealing_jax.training.directions_loop import train_directions as train
from gangealing_jax.training.learned_directions import directions_of, evaluate, make_train_step
from gangealing_jax.training.parallel import make_mesh


@pytest.mark.parametrize("constraint", ["unit", "orthonormal"])
def test_direction_constraints(constraint):
    matrix = DirectionMatrix(5, 12, constraint)
    variables = matrix.init(jax.random.PRNGKey(0))
    d = np.asarray(matrix.apply(variables), np.float64)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=1e-5)
    gram = d @ d.T
    if constraint == "orthonormal":
        np.testing.assert_allclose(gram, np.eye(5), atol=1e-5)
    else:  # unit rows of a random matrix: not orthogonal
        assert np.abs(gram - np.eye(5)).max() > 0.05
    # The orthonormal rows span the raw rows' space (QR keeps it) and vary smoothly with them.
    raw = np.asarray(variables["params"]["raw"], np.float64)
    residual = raw - (raw @ d.T) @ d
    if constraint == "orthonormal":
        np.testing.assert_allclose(residual, 0.0, atol=1e-4)
    grads = jax.grad(lambda v: jnp.sum(matrix.apply(v)[:, 0]))(variables)
    assert np.all(np.isfinite(grads["params"]["raw"]))


def test_reconstructor_learns_the_shipped_generators_directions():
    config = default_config.get_config()
    config.num_directions, config.batch, config.num_w_samples = 4, 16, 2000
    config.lr = config.directions_lr = 3e-3
    config.min_shift = 2.0  # every shift clearly visible: a short run learns from each pair
    config.reconstructor.width = 16
    run, state = setup_run(config)
    step = make_train_step(run.generator, run.reconstructor, run.optimizer, run.settings)
    losses = []
    for _ in range(40):
        state, metrics = step(state, run.frozen)
        losses.append(float(metrics["loss"]))
    assert step._cache_size() == 1  # compiled once: no silent recompiles
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
    fresh = evaluate(
        state.params,
        run.frozen,
        jax.random.PRNGKey(123),
        generator=run.generator,
        reconstructor=run.reconstructor,
        settings=run.settings,
        batch=128,
    )
    chance = 1.0 / config.num_directions
    # Measured 0.87 after 40 steps; twice chance leaves room for other platforms' rounding.
    assert float(fresh["accuracy"]) > 2 * chance, fresh


def test_sharded_step_equals_single_device():
    assert len(jax.devices()) == 8, "conftest must provide 8 CPU devices"
    run, fresh = setup_run(test_config.get_config())  # batch 8: one pair per device
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = make_mesh(devices)
        step = make_train_step(run.generator, run.reconstructor, run.optimizer, run.settings, mesh)
        state = jax.device_put(
            jax.tree.map(jnp.array, fresh),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
        )
        history = []
        for _ in range(2):
            state, metrics = step(state, run.frozen)
            history.append(jax.device_get(metrics))
        results.append((jax.device_get(state.params), history))
    (single, hist_single), (sharded, hist_sharded) = results
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)  # noqa: E731
    jax.tree.map(close, single, sharded)
    jax.tree.map(close, hist_single, hist_sharded)


def test_resume_is_exact(tmp_path):
    config = test_config.get_config()
    straight = train(config, tmp_path / "straight")  # 4 steps without stopping
    config.iters = 2
    train(config, tmp_path / "resumed")
    config.iters = 4
    resumed = train(config, tmp_path / "resumed")  # restores step 2, runs to 4
    assert (straight.step, resumed.step) == (4, 4)
    a, b = load_directions(straight.directions_path), load_directions(resumed.directions_path)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert b.method == "learned" and b.vectors.shape == (3, config.generator.random_style_dim)
    np.testing.assert_allclose(b.vectors @ b.vectors.T, np.eye(3), atol=1e-5)
    assert np.all(b.std > 0)
    # Exported ranked by W's spread along each, largest first: a permutation of the trained rows,
    # and each row's std is the spread of the run's own w samples along it.
    assert np.all(np.diff(b.std) <= 0)
    np.testing.assert_allclose(b.scores, np.square(b.std), rtol=1e-6)
    run, fresh = setup_run(config)
    with CheckpointManager(tmp_path / "resumed" / "checkpoints", save_every=2) as ckpts:
        params = ckpts.restore_latest(fresh).params
    trained = np.asarray(directions_of(params, run.generator, run.settings))
    matches = np.abs(b.vectors @ trained.T)  # |cos| between exported and trained rows
    np.testing.assert_allclose(np.sort(matches.max(axis=1)), 1.0, atol=1e-5)
    np.testing.assert_allclose(b.std, np.std(run.samples @ b.vectors.T, axis=0, ddof=1), rtol=1e-4)
    records = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1] == {"step": 4, **straight.metrics}
    with CheckpointManager(tmp_path / "resumed" / "checkpoints", save_every=2) as ckpts:
        assert ckpts.all_steps() == [2, 4]


def test_cli_refuses_a_bad_field_before_writing(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gangealing_jax.train_directions",
            "--config=configs/directions/test.py",
            f"--workdir={work}",
            "--config.constraint=sideways",
        ],
        cwd=pathlib.Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: --config.constraint='sideways': choose one of unit, orthonormal"
    ]
    assert not work.exists()
