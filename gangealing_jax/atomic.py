"""Writing state to disk so that a crash, a kill or a full disk never leaves a half-written copy.

Every file or folder is written under a temporary name in the same directory, flushed to disk, and
only then renamed over the old one (a rename within one filesystem is atomic). The old copy stays
whole until the new one is; a failed write removes only its own temporary.

    write_text(path, text)                      # config.json, summary.json, ...
    with open_for_write(path) as f:             # any writer taking a binary file (np.savez)
        np.savez(f, ...)
    with staged_directory(model_dir) as tmp:    # a whole folder (an exported model)
        save_into(tmp)

Folders cannot be swapped in one rename: the old one is renamed to `<name>.old` first, then the new
one into place. A crash between the two leaves `<name>.old`, which the next `staged_directory` (and
`recover_directory`) moves back.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil


def fsync_directory(path: str | os.PathLike) -> None:
    """Makes a rename inside `path` durable (without it a power cut may undo the rename)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # platforms that cannot open a directory (Windows) have no such step
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_for_write(path: str | os.PathLike, mode: str = "wb"):
    """A file object on a temporary beside `path`, renamed onto it only if the block succeeds."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: it creates files readable by their owner only, ignoring the umask.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    with open_for_write(path, "wb") as f:
        f.write(data)
    return pathlib.Path(path)


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    with open_for_write(path, "w") as f:
        f.write(text)
    return pathlib.Path(path)


def write_json(path: str | os.PathLike, value, **dump_kwargs) -> pathlib.Path:
    return write_text(path, json.dumps(value, **dump_kwargs) + "\n")


def staging_paths(target: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """(`<target>.tmp`, `<target>.old`): fixed names, so every host of a run agrees on them and a
    leftover from a crash is found again."""
    target = pathlib.Path(target).absolute()
    return target.with_name(target.name + ".tmp"), target.with_name(target.name + ".old")


def recover_directory(target: str | os.PathLike) -> None:
    """Moves `<target>.old` back when a crash came between the two renames of a swap."""
    target = pathlib.Path(target).absolute()
    _, old = staging_paths(target)
    if old.is_dir() and not target.exists():
        old.rename(target)


def begin_directory(target: str | os.PathLike) -> pathlib.Path:
    """A fresh, empty `<target>.tmp` to write the new folder into (after a recovery if needed)."""
    tmp, _ = staging_paths(target)
    recover_directory(target)
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted write: never the good copy
    tmp.mkdir(parents=True)
    return tmp


def commit_directory(target: str | os.PathLike) -> pathlib.Path:
    """Swaps the finished `<target>.tmp` in for `target`; the old folder is removed last."""
    target = pathlib.Path(target).absolute()
    tmp, old = staging_paths(target)
    _fsync_tree(tmp)
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    fsync_directory(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target


def abort_directory(target: str | os.PathLike) -> None:
    tmp, _ = staging_paths(target)
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike):
    """Yields `<target>.tmp`; the block writes the whole new folder there, then it replaces
    `target`. If the block raises, `target` is left exactly as it was."""
    tmp = begin_directory(target)
    try:
        yield tmp
    except BaseException:
        abort_directory(target)
        raise
    commit_directory(target)


def _fsync_tree(root: pathlib.Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(dirpath)
