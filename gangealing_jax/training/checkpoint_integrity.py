"""Telling a damaged checkpoint from a good one, and setting damaged ones aside.

Orbax notices a checkpoint cut short only sometimes (a truncated data file fails its read), and a
flipped bit not at all: the array loads with a wrong value. So every step folder gets a manifest,
written once orbax has finished the save: the size and CRC-32 of each of its files. Before a
restore the files are checked against it. Checkpoints written before manifests existed have none;
for them orbax's own read is the only check.

A damaged step folder is renamed into `<checkpoints>/damaged/<step>-<kind>`, never deleted: it
may hold the only copy of a week of training, and a person may know how to repair it.
"""

from __future__ import annotations

import json
import os
import pathlib
import zlib
from typing import NamedTuple

from gangealing_jax import atomic

MANIFEST = "gangealing_manifest.json"
MANIFEST_FORMAT = 1
DAMAGED_DIR = "damaged"
_STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's record of a finished step
_ITEM_METADATA = "_METADATA"  # orbax's tree metadata, one per item folder
_CHUNK = 2**22

# Errors by which tensorstore / orbax report unreadable data (not a mismatch with the target tree).
_READ_FAILURES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "Error reading", "Error opening")


class Damage(NamedTuple):
    kind: str  # one word, used in the folder name: truncated, checksum, missing, metadata, empty
    detail: str  # what is wrong, for a person


def file_crc32(path: pathlib.Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(step_dir: pathlib.Path) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), step_dir)
            if rel != MANIFEST:
                out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def write_manifest(step_dir: str | os.PathLike) -> pathlib.Path:
    """Records size and CRC-32 of every file of a finished step folder in `<step_dir>/MANIFEST`."""
    step_dir = pathlib.Path(step_dir)
    files = {
        rel: {"bytes": (step_dir / rel).stat().st_size, "crc32": file_crc32(step_dir / rel)}
        for rel in _files(step_dir)
    }
    return atomic.write_json(
        step_dir / MANIFEST, {"format": MANIFEST_FORMAT, "files": files}, indent=1, sort_keys=True
    )


def find_damage(step_dir: str | os.PathLike) -> Damage | None:
    """What is wrong with a step folder, or None when nothing is found."""
    step_dir = pathlib.Path(step_dir)
    present = _files(step_dir)
    if not present:
        return Damage("empty", "the step folder is empty")
    if _STEP_METADATA not in present:
        return Damage("metadata", f"orbax's metadata file {_STEP_METADATA} is missing")
    if not any(rel.count("/") == 1 and rel.endswith("/" + _ITEM_METADATA) for rel in present):
        return Damage("metadata", f"orbax's tree metadata (<item>/{_ITEM_METADATA}) is missing")
    manifest_path = step_dir / MANIFEST
    if not manifest_path.is_file():
        return None  # written before manifests: orbax's read decides
    try:
        expected = json.loads(manifest_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return Damage("manifest", f"its manifest {MANIFEST} is unreadable ({err})")
    for rel, record in sorted(expected.items()):
        path = step_dir / rel
        if not path.is_file():
            return Damage("missing", f"file {rel} is missing")
        size = path.stat().st_size
        if size < record["bytes"]:
            return Damage(
                "truncated", f"file {rel} is truncated ({size} of {record['bytes']} bytes)"
            )
        if size != record["bytes"]:
            return Damage("size", f"file {rel} has {size} bytes, {record['bytes']} were written")
        if file_crc32(path) != record["crc32"]:
            return Damage("checksum", f"file {rel} fails its checksum (its contents changed)")
    return None


def is_read_failure(err: BaseException) -> bool:
    """Whether an orbax restore error says the data is unreadable (rather than, say, that the
    target tree has another structure, which is a config mismatch and no fault of the files)."""
    if isinstance(err, (json.JSONDecodeError, FileNotFoundError, EOFError)):
        return True
    text = str(err)
    return any(marker in text for marker in _READ_FAILURES)


def set_aside(checkpoint_dir: str | os.PathLike, step: int, damage: Damage) -> pathlib.Path:
    """Renames the step folder into `damaged/<step>-<kind>` (a free name: `-2`, `-3`, ...)."""
    checkpoint_dir = pathlib.Path(checkpoint_dir)
    aside = checkpoint_dir / DAMAGED_DIR
    aside.mkdir(exist_ok=True)
    target = aside / f"{step}-{damage.kind}"
    n = 1
    while target.exists():
        n += 1
        target = aside / f"{step}-{damage.kind}-{n}"
    (checkpoint_dir / str(step)).rename(target)
    atomic.fsync_directory(checkpoint_dir)
    return target
