"""Train-state checkpoints (orbax) and clean stopping on SIGTERM, shared by every training loop.

The whole train state (step, parameters, optimizer states, EMA, RNG key: any pytree, flax struct
dataclasses included) is saved, so that a resumed run continues exactly as one that never stopped.

Saves are atomic: orbax writes a step into a temporary directory and renames it only once complete,
so a crash (or a full disk) mid-save leaves the previous checkpoints as they were; the half-written
directory is never restored from, and is removed the next time the directory is opened.

Damage after a save (a file cut short, a flipped bit, lost metadata) is caught on restore by the
manifest each save leaves in its step folder (`checkpoint_integrity`): the damaged step is named in
one line, moved into `damaged/`, and the newest intact one is restored instead.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import signal
import sys
import threading

import flax.serialization
import jax
import numpy as np

from gangealing_jax.training import checkpoint_integrity as integrity
from gangealing_jax.training import parallel

# Room asked for beyond the raw size of the state (metadata, filesystem slack).
_DISK_MARGIN_BYTES = 16 * 2**20
_MIB = 2**20


class CheckpointDiskFullError(OSError):
    """Not enough disk space to write a checkpoint; earlier checkpoints are intact."""


def tree_nbytes(tree) -> int:
    return int(
        sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    )


def _is_disk_full(err: BaseException) -> bool:
    seen = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "no space left on device" in str(e).lower():
            return True
        stack.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])
    return False


class CheckpointManager:
    """Saves every `save_every` steps (or when forced), keeps the newest `keep`, restores the latest.

    Usage:
        ckpts = CheckpointManager(workdir / "checkpoints", save_every=1000, keep=3)
        state = ckpts.restore_latest(state)      # unchanged when there is no checkpoint yet
        ...
        ckpts.save(step, state)                  # no-op unless step is on the interval
        ckpts.save(step, state, force=True)      # on SIGTERM / at the end
        ckpts.close()
    """

    def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int = 3):
        import orbax.checkpoint as ocp

        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.directory = pathlib.Path(directory).absolute()
        self.save_every = int(save_every)
        self._ocp = ocp
        if jax.process_index() == 0 and self.directory.is_dir():
            self._remove_partial_saves()  # left by a crash mid-save (orbax only does it lazily)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            cleanup_tmp_directories=True,
            # Synchronous saves: a failure (a full disk) surfaces here, at the step that caused it.
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        return step > 0 and step % self.save_every == 0

    def save(self, step: int, state, *, force: bool = False) -> bool:
        """Writes `state` as checkpoint `step` if on the interval (or forced); True if written.

        Raises CheckpointDiskFullError (naming the directory and the room needed) when the disk
        cannot hold it; the checkpoints written before stay as they were.
        """
        step = int(step)
        if not (force or self.should_save(step)):
            return False
        if step in self._manager.all_steps():
            return False
        tree = jax.tree.map(_host_if_replicated, flax.serialization.to_state_dict(state))
        needed = tree_nbytes(tree) + _DISK_MARGIN_BYTES
        self.directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise self._disk_full(step, needed, free)
        try:
            self._manager.save(step, args=self._ocp.args.StandardSave(tree), force=True)
            self._manager.wait_until_finished()
            if jax.process_index() == 0:
                integrity.write_manifest(self.step_dir(step))
        except Exception as err:
            if _is_disk_full(err):
                self._remove_partial_saves()
                raise self._disk_full(step, needed, shutil.disk_usage(self.directory).free) from err
            raise
        return True

    def restore(self, target, step: int | None = None):
        """The checkpoint `step` (default: latest) in the structure, dtypes and shardings of `target`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        template = flax.serialization.to_state_dict(target)
        abstract = jax.tree.map(_abstract_like, template)
        restored = self._manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
        restored = jax.tree.map(_place_like, restored, template)
        return flax.serialization.from_state_dict(target, restored)

    def restore_latest(self, target):
        """The newest intact checkpoint restored into `target` (`target` itself when there is none).

        Each damaged newer one is reported in one line and moved into `damaged/`.
        """
        for step in reversed(self.all_steps()):
            damage = integrity.find_damage(self.step_dir(step))
            if damage is None:
                try:
                    return self.restore(target, step)
                except Exception as err:
                    verified = (self.step_dir(step) / integrity.MANIFEST).is_file()
                    if verified or not integrity.is_read_failure(err):
                        raise  # intact files: the target differs (another config), not damage
                    first_line = str(err).strip().splitlines()[0][:300]
                    damage = integrity.Damage("unreadable", f"orbax cannot read it ({first_line})")
            self._set_aside(step, damage)
        return target

    def step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(int(step))

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _disk_full(self, step: int, needed: int, free: int) -> CheckpointDiskFullError:
        latest = self.latest_step()
        kept = (
            f"the last good checkpoint (step {latest}) is intact"
            if latest is not None
            else "no earlier checkpoint exists"
        )
        return CheckpointDiskFullError(
            errno.ENOSPC,
            f"not enough disk space to save the checkpoint of step {step} in {self.directory}: "
            f"it needs about {needed / _MIB:.1f} MiB and {free / _MIB:.1f} MiB are free; {kept}. "
            "Free some space (or move the work directory) and resume.",
        )

    def _set_aside(self, step: int, damage: integrity.Damage) -> None:
        moved = self.directory / integrity.DAMAGED_DIR / f"{step}-{damage.kind}"
        if jax.process_index() == 0:
            moved = integrity.set_aside(self.directory, step, damage)
        parallel.sync_processes(f"checkpoint_set_aside_{step}")
        self._manager.reload()
        older = [s for s in self.all_steps() if s < step]
        then = f"trying step {older[-1]}" if older else "no older checkpoint: starting afresh"
        print(
            f"checkpoint step {step} in {self.directory} is damaged: {damage.detail}; "
            f"moved to {moved}; {then}",
            file=sys.stderr,
            flush=True,
        )

    def _remove_partial_saves(self) -> None:
        for path in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(path, ignore_errors=True)


def _is_replicated(x) -> bool:
    return isinstance(x, jax.Array) and x.is_fully_replicated


def _host_if_replicated(x):
    """Replicated arrays are written from one local copy (fast, and the same on every host);
    sharded ones are left to orbax."""
    return np.asarray(x.addressable_data(0)) if _is_replicated(x) else x


def _abstract_like(x):
    x = x if hasattr(x, "dtype") else np.asarray(x)
    sharding = None if _is_replicated(x) or not isinstance(x, jax.Array) else x.sharding
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _place_like(restored, target):
    return jax.device_put(restored, target.sharding) if _is_replicated(target) else restored


class TerminationRequest:
    """Turns SIGTERM and Ctrl-C (SIGINT) into a flag the training loop polls, so that it saves
    and exits cleanly; a second Ctrl-C exits at once, without saving.

        with TerminationRequest() as stop:
            for step in ...:
                ...
                if stop.requested:
                    save(); break

    Outside the main thread signals cannot be caught; the flag then only changes via `request()`.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self._signals = tuple(signals)
        self._previous = {}
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, signum=None, _frame=None):
        self._event.set()
        if signum == signal.SIGINT:
            # The default action from now on: the next Ctrl-C ends the process even while it is
            # blocked inside a device computation or a save, where no Python handler could run.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # os.write, not print: a handler may interrupt a print to the same stream.
            os.write(
                sys.stderr.fileno(),
                b"\ninterrupted: saving a checkpoint after this iteration "
                b"(Ctrl-C again to exit at once, without saving)\n",
            )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self.request)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
