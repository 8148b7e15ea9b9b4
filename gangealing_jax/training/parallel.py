"""Data parallelism shared by the training loops: one mesh axis 'data', batch sharded, state replicated.

Steps are plain `jax.jit` functions with explicit in/out shardings: XLA sees the global batch, so
means, the discriminator's minibatch-stddev groups and every metric are computed over all devices
exactly as on one device.

Several hosts: call `initialize_distributed()` first (it runs `jax.distributed.initialize()` when
asked to by its argument or by GANGEALING_DISTRIBUTED=1); each host then loads only its own slice of
the global batch (`process_batch_slice`) and `shard_batch` assembles the global array.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gangealing_jax.errors import ConfigError

DATA_AXIS = "data"
DISTRIBUTED_ENV = "GANGEALING_DISTRIBUTED"


def initialize_distributed(enabled: bool | None = None) -> bool:
    """Joins a multi-host run when `enabled` (default: the GANGEALING_DISTRIBUTED env var).

    Returns whether jax.distributed was initialised; one host without the flag is left untouched.
    Coordinator address, process count and id come from the environment as
    `jax.distributed.initialize()` reads them (cluster auto-detection or JAX_COORDINATOR_ADDRESS...).
    """
    if enabled is None:
        enabled = os.environ.get(DISTRIBUTED_ENV, "").lower() in ("1", "true", "yes")
    if not enabled:
        return False
    try:
        jax.distributed.initialize()
    except RuntimeError as err:
        if "already" in str(err).lower():  # initialised earlier in this process
            return True
        raise
    return True


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis 'data' over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data'; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device (parameters, optimizer state, keys)."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    devices = mesh.devices.size
    if global_batch % devices:
        raise ConfigError(
            f"batch {global_batch} is not divisible by the {devices} devices of the mesh; "
            f"use a multiple of {devices}"
        )


def process_batch_slice(global_batch: int) -> slice:
    """Rows of the global batch this host loads (all of them on one host)."""
    count, index = jax.process_count(), jax.process_index()
    if global_batch % count:
        raise ConfigError(f"batch {global_batch} is not divisible by {count} hosts")
    local = global_batch // count
    return slice(index * local, (index + 1) * local)


def shard_batch(x, mesh: Mesh):
    """Host arrays (this host's rows; a pytree is fine) -> global arrays sharded on axis 0."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), x
    )


def replicate(tree, mesh: Mesh):
    """Puts a pytree of (host or device) arrays on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def any_process(flag: bool) -> bool:
    """True when `flag` is true on at least one host (so that every host stops together)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([flag], dtype=np.int32))
    return bool(np.any(flags))


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-host run (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def host_copy(tree):
    """Replicated device arrays -> numpy, from this process's first local copy (every host has
    one, so it works on every host)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
