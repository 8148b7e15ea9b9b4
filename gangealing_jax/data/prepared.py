"""The prepared-dataset format: a directory of .npy arrays plus meta.json.

    images.npy     (N, H, W, 3) uint8, opened memory-mapped (random access, nothing loaded up front)
    keypoints.npy  (N, P, 3) float32: pixel x, pixel y (pixel centres), visible (0 or 1)
    bboxes.npy     (N, 4) float32: x0, y0, x1, y1 in pixels
    pairs.npy      (M, 2) int64: fixed (source, target) index pairs for keypoint transfer
    meta.json      format, version, resolution, count, keypoint_names, flip_permutation, source

meta.json is written last, so a directory whose writing was interrupted has no meta.json and
is refused. Writing goes through np.lib.format.open_memmap, so a dataset of any size can be
filled chunk by chunk without holding all images in memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from gangealing_jax.data import families, procedural
from gangealing_jax.errors import InputFileError

FORMAT_NAME = "gangealing_jax.prepared"
FORMAT_VERSION = 1
_ARRAY_FILES = ("images.npy", "keypoints.npy", "bboxes.npy", "pairs.npy")
_META_FILE = "meta.json"
_META_KEYS = ("format", "version", "resolution", "count", "keypoint_names", "flip_permutation")


class PreparedDatasetError(InputFileError):
    """A prepared-dataset directory whose files disagree with each other or with the format."""


class PreparedItem(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8
    keypoints: np.ndarray  # (P, 3) float32
    bbox: np.ndarray  # (4,) float32


def _check_flip_permutation(flip_permutation, num_keypoints: int, where: str) -> np.ndarray:
    perm = np.asarray(flip_permutation, np.int64)
    if perm.shape != (num_keypoints,) or not np.array_equal(
        np.sort(perm), np.arange(num_keypoints)
    ):
        raise PreparedDatasetError(
            f"{where}: flip_permutation must be a permutation of range({num_keypoints}), "
            f"got {perm.tolist()}"
        )
    return perm


class PreparedWriter:
    """Creates a prepared dataset of `count` items and fills it in chunks.

    Usage: writer = PreparedWriter(...); writer.write(start, images, keypoints, bboxes) for each
    chunk; writer.finish(pairs). Nothing is readable before finish() writes meta.json.
    """

    def __init__(
        self,
        path: str,
        count: int,
        resolution: int,
        keypoint_names: Sequence[str],
        flip_permutation,
        source: str,
        extra_meta: dict | None = None,
    ):
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        num_keypoints = len(keypoint_names)
        perm = _check_flip_permutation(flip_permutation, num_keypoints, path)
        for name in (_META_FILE, *_ARRAY_FILES):
            if os.path.exists(os.path.join(path, name)):
                raise FileExistsError(f"{path} already holds {name}; refusing to overwrite it")
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "resolution": int(resolution),
            "count": int(count),
            "keypoint_names": list(keypoint_names),
            "flip_permutation": perm.tolist(),
            "source": source,
            **(extra_meta or {}),
        }

        def create(name, dtype, shape):
            full = os.path.join(path, name)
            return np.lib.format.open_memmap(full, mode="w+", dtype=dtype, shape=shape)

        self.images = create("images.npy", np.uint8, (count, resolution, resolution, 3))
        self.keypoints = create("keypoints.npy", np.float32, (count, num_keypoints, 3))
        self.bboxes = create("bboxes.npy", np.float32, (count, 4))
        self._written = np.zeros(count, bool)

    def write(self, start: int, images, keypoints, bboxes) -> None:
        """Store items start .. start + len(images) - 1."""
        stop = start + len(images)
        if start < 0 or stop > len(self._written):
            raise IndexError(f"items {start}..{stop - 1} fall outside 0..{len(self._written) - 1}")
        self.images[start:stop] = images
        self.keypoints[start:stop] = keypoints
        self.bboxes[start:stop] = bboxes
        self._written[start:stop] = True

    def finish(self, pairs) -> PreparedDataset:
        """Write the pairs, flush the arrays, write meta.json last and open the result."""
        if not self._written.all():
            missing = np.flatnonzero(~self._written)
            raise ValueError(f"{self.path}: items {missing[:8].tolist()}... were never written")
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        if pairs.size and (pairs.min() < 0 or pairs.max() >= len(self._written)):
            raise ValueError(f"{self.path}: pairs hold indices outside 0..{len(self._written) - 1}")
        np.save(os.path.join(self.path, "pairs.npy"), pairs)
        for array in (self.images, self.keypoints, self.bboxes):
            array.flush()
        self.images = self.keypoints = self.bboxes = None  # release the maps
        with open(os.path.join(self.path, _META_FILE), "w") as f:
            json.dump(self.meta, f, indent=2)
        return PreparedDataset(self.path)


class PreparedDataset:
    """Reads a prepared dataset. Raises FileNotFoundError naming the directory and the missing
    file, and PreparedDatasetError naming the file whose content disagrees with the others."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isdir(path):
            raise FileNotFoundError(f"prepared dataset directory {path} does not exist")
        for name in (_META_FILE, *_ARRAY_FILES):
            if not os.path.isfile(os.path.join(path, name)):
                raise FileNotFoundError(
                    f"prepared dataset {path} is missing {name} (an interrupted write leaves "
                    f"no {_META_FILE}; write the dataset again)"
                )
        with open(os.path.join(path, _META_FILE)) as f:
            self.meta = json.load(f)
        missing = [k for k in _META_KEYS if k not in self.meta]
        if missing or self.meta["format"] != FORMAT_NAME:
            raise PreparedDatasetError(
                f"{path}/{_META_FILE} is not a {FORMAT_NAME} meta file (missing {missing})"
            )
        if self.meta["version"] != FORMAT_VERSION:
            raise PreparedDatasetError(
                f"{path}/{_META_FILE} has format version {self.meta['version']}; "
                f"this reader understands version {FORMAT_VERSION}"
            )
        n, res = self.meta["count"], self.meta["resolution"]
        num_keypoints = len(self.meta["keypoint_names"])
        self.images = self._load("images.npy", np.uint8, (n, res, res, 3), mmap_mode="r")
        self.keypoints = self._load("keypoints.npy", np.float32, (n, num_keypoints, 3))
        self.bboxes = self._load("bboxes.npy", np.float32, (n, 4))
        self.pairs = self._load("pairs.npy", np.int64, None)
        if self.pairs.ndim != 2 or self.pairs.shape[1] != 2:
            raise PreparedDatasetError(
                f"{path}/pairs.npy has shape {self.pairs.shape}; expected (M, 2)"
            )
        if self.pairs.size and (self.pairs.min() < 0 or self.pairs.max() >= n):
            raise PreparedDatasetError(f"{path}/pairs.npy holds indices outside 0..{n - 1}")
        self.flip_permutation = _check_flip_permutation(
            self.meta["flip_permutation"], num_keypoints, f"{path}/{_META_FILE}"
        )

    def _load(self, name, dtype, shape, mmap_mode=None):
        full = os.path.join(self.path, name)
        array = np.load(full, mmap_mode=mmap_mode, allow_pickle=False)
        if array.dtype != dtype or (shape is not None and array.shape != shape):
            raise PreparedDatasetError(
                f"{full} holds {array.dtype}{list(array.shape)}; {_META_FILE} implies "
                f"{np.dtype(dtype)}{list(shape) if shape is not None else ''}"
            )
        return array

    @property
    def resolution(self) -> int:
        return self.meta["resolution"]

    @property
    def keypoint_names(self) -> list[str]:
        return self.meta["keypoint_names"]

    def __len__(self) -> int:
        return self.meta["count"]

    def __getitem__(self, index: int) -> PreparedItem:
        return PreparedItem(
            np.asarray(self.images[index]), self.keypoints[index], self.bboxes[index]
        )


def random_pairs(count: int, num_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(num_pairs, 2) int64 pairs of distinct indices in 0..count-1."""
    if num_pairs == 0:
        return np.zeros((0, 2), np.int64)
    if count < 2:
        raise ValueError(f"pairs of distinct items need at least 2 items, got {count}")
    first = rng.integers(0, count, num_pairs)
    second = (first + rng.integers(1, count, num_pairs)) % count  # never equal to first
    return np.stack([first, second], axis=-1).astype(np.int64)


def write_procedural_dataset(
    path: str,
    n: int,
    seed: int,
    config: procedural.ProceduralConfig | None = None,
    num_pairs: int = 1000,
    chunk: int = 256,
    family: str = "faces",
) -> PreparedDataset:
    """Render items 0..n-1 of the procedural `family` (data/families.py), seed `seed`, into a
    prepared dataset at `path`.

    The pairs come from their own stream of `seed`, so they do not depend on `chunk`.
    """
    module = families.family_module(family)
    config = families.family_config(family) if config is None else config
    writer = PreparedWriter(
        path,
        count=n,
        resolution=config.resolution,
        keypoint_names=module.KEYPOINT_NAMES,
        flip_permutation=module.FLIP_PERMUTATION,
        source="procedural",
        extra_meta={
            "seed": int(seed),
            "family": family,
            "procedural_config": _jsonable(config),
        },
    )
    for start in range(0, n, chunk):
        batch = module.generate(min(chunk, n - start), seed, config, start=start)
        writer.write(start, *batch)
    pair_rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1,)))
    return writer.finish(random_pairs(n, num_pairs, pair_rng))


def _jsonable(config: procedural.ProceduralConfig) -> dict:
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
