"""Two processes joined by jax.distributed on loopback train exactly like one process on one device.

Each process owns 2 fake CPU devices; gloo carries the collectives; the mesh spans all 4 devices.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "multihost_worker.py"
BATCH = 8
TIMEOUT_S = 300
CACHE_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "gangealing_jax_test_xla_cache")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(devices_per_process: int) -> dict:
    env = dict(os.environ)
    # The device count is fixed when jax starts: replace the 8 devices of this test session.
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _start(out: pathlib.Path, log: pathlib.Path, *extra: str, devices_per_process: int):
    command = [sys.executable, str(WORKER), str(out), f"--batch={BATCH}"]
    command += [f"--cache-dir={CACHE_DIR}", *extra]
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=_env(devices_per_process),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _wait_all(procs: dict, deadline: float) -> None:
    """Waits for every process; on a timeout or a failure kills the rest and reports the logs."""
    try:
        for name, (proc, log) in procs.items():
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            if rc != 0:
                pytest.fail(f"{name} exited with {rc}:\n{log.read_text()[-3000:]}")
    except subprocess.TimeoutExpired:
        logs = "\n".join(f"--- {n}\n{log.read_text()[-1500:]}" for n, (_, log) in procs.items())
        pytest.fail(f"worker processes did not finish within {TIMEOUT_S} s\n{logs}")
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _params(path: pathlib.Path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_two_processes_equal_one_device(tmp_path):
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = {}
    for index in range(2):
        out, log = tmp_path / f"process{index}.npz", tmp_path / f"process{index}.log"
        proc = _start(
            out, log, f"--coordinator={coordinator}", "--num-processes=2",
            f"--process-id={index}", devices_per_process=2,
        )  # fmt: skip
        procs[f"process {index}"] = (proc, log)
    single_log = tmp_path / "single.log"
    procs["single"] = (
        _start(tmp_path / "single.npz", single_log, "--devices=1", devices_per_process=1),
        single_log,
    )
    _wait_all(procs, time.monotonic() + TIMEOUT_S)

    single = _params(tmp_path / "single.npz")
    first, second = (_params(tmp_path / f"process{i}.npz") for i in range(2))
    assert int(single["global_devices"]) == 1 and int(single["process_count"]) == 1
    assert int(first["global_devices"]) == 4 and int(first["process_count"]) == 2
    names = sorted(k for k in single if k.startswith("param:"))
    assert names and names == sorted(k for k in first if k.startswith("param:"))
    for name in ["losses", *names]:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        np.testing.assert_allclose(first[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # The steps moved the parameters, so the comparison is not between two initial states.
    assert not np.allclose(single["param:['congealing']['coefficients']"], 0.1)
