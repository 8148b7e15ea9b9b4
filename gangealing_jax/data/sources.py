"""Inputs for dataset preparation: image folders, video files, SPair-71K and CUB-200-2011.

Each `*_source` function returns a `Source`: metadata plus a lazy iterator of `SourceUnit`s. A unit
is what is kept or skipped as a whole: one image, one frame, or an SPair pair of two images (if
either image is unreadable the pair goes). Keypoints and boxes are in source pixels of the stored
image, zero-based; `gangealing_jax.prepare_data` maps them into the prepared frame.
"""

from __future__ import annotations

import decimal
import glob
import importlib.util
import json
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from gangealing_jax.errors import ConfigError, InputFileError, MissingDependencyError

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga".split()
)

# Mirroring an image swaps left and right parts; these index permutations undo the swap. They are
# the reference's tables (the categories it evaluates); CUB's order is that of parts/parts.txt.
SPAIR_FLIP_PERMUTATIONS = {
    "bicycle": (0, 1, 3, 2, 4, 5, 7, 6, 8, 10, 9, 11),
    "cat": (1, 0, 3, 2, 5, 4, 7, 6, 8, 10, 9, 12, 11, 13, 14),
    "dog": (1, 0, 3, 2, 5, 4, 6, 7, 8, 10, 9, 12, 11, 13, 14, 15),
    "tvmonitor": (2, 1, 0, 7, 6, 5, 4, 3, 10, 9, 8, 15, 14, 13, 12, 11),
}
CUB_FLIP_PERMUTATION = (0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14)
CUB_PART_NAMES = (
    "back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
    "nape", "right eye", "right leg", "right wing", "tail", "throat",
)  # fmt: skip
CUB_BOX_PADDING = 0.05  # ACSM grows the tight box by 5% of its size on every side


class MissingVideoBackendError(MissingDependencyError):
    """imageio has no plugin that decodes this video container."""


class SourceItem(NamedTuple):
    name: str  # shown in reports
    path: str | None  # image file to read, or None when `frame` holds the pixels
    frame: np.ndarray | None = None  # (H, W, 3) uint8 decoded video frame
    keypoints: np.ndarray | None = None  # (P, 3) float32 x, y, visible; None: no keypoints
    bbox: np.ndarray | None = None  # (4,) x0, y0, x1, y1; None: the whole image
    crop_box: np.ndarray | None = None  # (4,) square integer box to crop; None: use the pad mode
    expected_size: tuple[int, int] | None = None  # (W, H) the annotation was made on


class SourceUnit(NamedTuple):
    name: str
    items: tuple[SourceItem, ...]
    error: str | None = None  # why the unit's annotation or frames could not be read


class Source(NamedTuple):
    kind: str  # folder | video | spair | cub
    unit_word: str  # how reports count units: "files", "frames", "pairs", "images"
    units: Iterator[SourceUnit]
    keypoint_names: tuple[str, ...] = ()
    flip_permutation: tuple[int, ...] = ()
    paired: bool = False  # every unit holds a (source, target) pair for keypoint transfer
    read_exif: bool = False  # apply the EXIF orientation (not for pixel-annotated datasets)
    ignored: tuple[str, ...] = ()  # inputs that were not candidates (non-image files, folders)
    extra_meta: dict | None = None


def _limit(units, max_units: int | None):
    for index, unit in enumerate(units):
        if max_units is not None and index >= max_units:
            return
        yield unit


def folder_source(root: str, recursive: bool = False, max_items: int | None = None) -> Source:
    """Images in `root` (and below it when recursive), sorted by relative path."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input folder {root} does not exist")
    files, ignored = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir + os.sep
        if not recursive:
            ignored += [prefix + d + "/" for d in dirnames]
            dirnames[:] = []
        for name in filenames:
            is_image = os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
            (files if is_image else ignored).append(prefix + name)
    units = (
        SourceUnit(f, (SourceItem(f, os.path.join(root, f)),)) for f in sorted(files)
    )  # fmt: skip
    units = _limit(units, max_items)
    return Source("folder", "files", units, read_exif=True, ignored=tuple(sorted(ignored)))


def _video_frames(path: str, frame_step: int) -> Iterator[SourceUnit]:
    import imageio.v3 as iio

    index = -1
    try:
        for index, frame in enumerate(iio.imiter(path)):
            if index % frame_step:
                continue
            frame = np.asarray(frame)
            if frame.ndim == 2:
                frame = np.repeat(frame[..., None], 3, axis=-1)
            name = f"frame {index:06d}"
            yield SourceUnit(name, (SourceItem(name, None, frame=frame[..., :3].astype(np.uint8)),))
    except Exception as err:  # a damaged stream ends the video; it is reported, not raised
        if "Could not find a backend" in str(err):
            raise MissingVideoBackendError(
                f"no installed video backend can decode {path}: install one with "
                "`pip install imageio[ffmpeg]` (or `pip install imageio[pyav]`)"
            ) from None
        what = "the whole video" if index < 0 else f"frames after {index:06d}"
        yield SourceUnit(what, (), error=f"decoding stopped: {err or type(err).__name__}")


def video_source(path: str, frame_step: int = 1, max_items: int | None = None) -> Source:
    """Every `frame_step`-th frame of a video file, decoded lazily with imageio."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input video {path} does not exist")
    if frame_step < 1:
        raise ConfigError(f"--frame_step={frame_step}: must be >= 1 (1 keeps every frame)")
    pillow_readable = os.path.splitext(path)[1].lower() in (".gif", ".webp", ".png", ".apng")
    has_backend = any(importlib.util.find_spec(m) for m in ("imageio_ffmpeg", "av"))
    if not (pillow_readable or has_backend):
        raise MissingVideoBackendError(
            f"reading {path} needs a video backend for imageio: `pip install imageio[ffmpeg]`"
        )
    units = _limit(_video_frames(path, frame_step), max_items)
    return Source("video", "frames", units, extra_meta={"frame_step": frame_step})


def _spair_item(root, category, data, side: str, num_keypoints: int) -> SourceItem:
    keypoints = np.zeros((num_keypoints, 3), np.float32)
    ids = [int(i) for i in data["kps_ids"]]
    if ids and max(ids) >= num_keypoints:
        raise ValueError(f"keypoint id {max(ids)} >= {num_keypoints} for SPair {category}")
    points = np.asarray(data[f"{side}_kps"], np.float32).reshape(-1, 2)
    keypoints[ids, :2] = points
    keypoints[ids, 2] = 1.0
    width, height = (int(v) for v in data[f"{side}_imsize"][:2])
    image_name = data[f"{side}_imname"]
    return SourceItem(
        image_name,
        os.path.join(root, "JPEGImages", category, image_name),
        keypoints=keypoints,
        bbox=np.asarray(data[f"{side}_bndbox"], np.float32),
        expected_size=(width, height),
    )


def _spair_units(root, category, files, num_keypoints) -> Iterator[SourceUnit]:
    for file in files:
        name = os.path.splitext(os.path.basename(file))[0]
        try:
            with open(file) as f:
                data = json.load(f)
            if data.get("category") != category:
                raise ValueError(f"annotated as {data.get('category')!r}, not {category!r}")
            if data.get("mirror", 0):
                raise ValueError("a mirrored pair; only unmirrored pairs are supported")
            sides = ("src", "trg")
            items = tuple(_spair_item(root, category, data, s, num_keypoints) for s in sides)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            yield SourceUnit(name, (), error=f"bad annotation {file}: {err!r}")
            continue
        yield SourceUnit(name, items)


def spair_source(
    root: str, category: str, split: str = "test", max_pairs: int | None = None
) -> Source:
    """SPair-71K pairs of one category: PairAnnotation/<split>/*:<category>.json, images under
    JPEGImages/<category>/. Items are source, target, source, ... and pair k is (2k, 2k + 1);
    keypoints not annotated in a pair are (0, 0, 0), as the reference stores them."""
    if category not in SPAIR_FLIP_PERMUTATIONS:
        raise ConfigError(
            f"SPair category {category!r} has no left/right keypoint table; "
            f"supported: {sorted(SPAIR_FLIP_PERMUTATIONS)}"
        )
    pattern = os.path.join(root, "PairAnnotation", split, f"*:{category}.json")
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no SPair-71K pair annotations match {pattern}")
    permutation = SPAIR_FLIP_PERMUTATIONS[category]
    names = tuple(f"{category}_{i}" for i in range(len(permutation)))
    units = _limit(_spair_units(root, category, files, len(permutation)), max_pairs)
    meta = {"spair_category": category, "spair_split": split}
    return Source("spair", "pairs", units, names, permutation, paired=True, extra_meta=meta)


class CubRecord(NamedTuple):
    image_id: int  # 1-based id of images.txt
    rel_path: str  # under images/
    bbox: np.ndarray  # (4,) zero-based x0, y0, x1, y1 (inclusive) tight box


def read_acsm_split(mat_path: str) -> list[CubRecord]:
    """ACSM's cleaned CUB validation split (val_cub_cleaned.mat): ids, paths, 1-based boxes."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise MissingDependencyError(
            f"reading the ACSM split {mat_path} needs scipy (`pip install scipy`); or pick "
            "another --cub_split (train, test or all) that reads CUB's own text files"
        ) from None
    images = loadmat(mat_path)["images"][0]
    records = []
    for entry in images:
        box = entry["bbox"][0, 0]
        corners = [float(box[k][0, 0]) for k in ("x1", "y1", "x2", "y2")]
        path = str(np.asarray(entry["rel_path"]).ravel()[0])
        image_id = int(np.asarray(entry["id"]).ravel()[0])
        records.append(CubRecord(image_id, path, np.asarray(corners) - 1.0))
    return records


def _read_table(path: str, columns: int) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CUB-200-2011 file {path} is missing")
    return np.loadtxt(path, dtype=np.float64, ndmin=2, usecols=range(columns))


def read_cub_split(root: str, split: str) -> list[CubRecord]:
    """CUB's own split (train, test or all) with its boxes from bounding_boxes.txt.

    Boxes (x, y, w, h) are read in the frame of the part locations, as ACSM's boxes are, and
    shifted to zero-based like them: (x - 1, y - 1, x + w - 2, y + h - 2).
    """
    with open(os.path.join(root, "images.txt")) as f:
        paths = dict(line.split(maxsplit=1) for line in f if line.strip())
    boxes = _read_table(os.path.join(root, "bounding_boxes.txt"), 5)
    is_train = dict(_read_table(os.path.join(root, "train_test_split.txt"), 2).astype(int))
    keep = {"train": {1}, "test": {0}, "all": {0, 1}}[split]
    records = []
    for image_id, x, y, w, h in boxes:
        if is_train[int(image_id)] in keep:
            box = np.array([x - 1, y - 1, x + w - 2, y + h - 2])
            records.append(CubRecord(int(image_id), paths[str(int(image_id))].strip(), box))
    return records


def _round_half_up(value: float) -> int:
    """ACSM's Python 2 rounding (halves away from zero for positives), exact for floats."""
    exact = decimal.Decimal(float(value))
    return int(exact.to_integral_value(rounding=decimal.ROUND_HALF_UP))


def acsm_square_box(bbox) -> np.ndarray:
    """ACSM's crop: grow the tight zero-based box by 5% per side, then make it square by
    growing the shorter side symmetrically. Returns inclusive integer (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    pad_w, pad_h = CUB_BOX_PADDING * (x1 - x0 + 1), CUB_BOX_PADDING * (y1 - y0 + 1)
    box = [_round_half_up(v) for v in (x0 - pad_w, y0 - pad_h, x1 + pad_w, y1 + pad_h)]
    width, height = box[2] - box[0] + 1, box[3] - box[1] + 1
    side = max(width, height)
    left = box[0] - _round_half_up((side - width) / 2.0)
    top = box[1] - _round_half_up((side - height) / 2.0)
    return np.array([left, top, left + side - 1, top + side - 1], np.int64)


def _cub_keypoints(root: str) -> dict[int, np.ndarray]:
    """image id -> (15, 3) zero-based x, y, visible (CUB's part locations are 1-based)."""
    table = _read_table(os.path.join(root, "parts", "part_locs.txt"), 5)
    out: dict[int, np.ndarray] = {}
    for image_id, part_id, x, y, visible in table:
        kps = out.setdefault(int(image_id), np.zeros((len(CUB_PART_NAMES), 3), np.float32))
        kps[int(part_id) - 1] = (x - 1, y - 1, visible)
    return out


def cub_source(
    root: str, split: str = "acsm_val", acsm_mat: str | None = None, max_items: int | None = None
) -> Source:
    """CUB-200-2011 (root holds images.txt, images/, parts/part_locs.txt) cropped as ACSM does.

    split 'acsm_val' reads ACSM's validation split from `acsm_mat` (default: val_cub_cleaned.mat
    in root or its parent); 'train', 'test', 'all' read CUB's train_test_split.txt.
    """
    if split == "acsm_val":
        if acsm_mat is None:
            candidates = [os.path.join(d, "val_cub_cleaned.mat") for d in (root, f"{root}/..")]
            acsm_mat = next((c for c in candidates if os.path.isfile(c)), None)
            if acsm_mat is None:
                raise FileNotFoundError(
                    f"no val_cub_cleaned.mat in {root} or its parent: pass its path, or pick "
                    "another CUB split (train, test, all)"
                )
        records = read_acsm_split(acsm_mat)
    elif split in ("train", "test", "all"):
        records = read_cub_split(root, split)
    else:
        raise ConfigError(f"unknown CUB split {split!r}; choose acsm_val, train, test or all")
    keypoints = _cub_keypoints(root)
    missing = [r.image_id for r in records if r.image_id not in keypoints]
    if missing:
        raise InputFileError(f"parts/part_locs.txt has no keypoints for CUB images {missing[:5]}")

    def cub_units():
        for record in records:
            item = SourceItem(
                record.rel_path,
                os.path.join(root, "images", record.rel_path),
                keypoints=keypoints[record.image_id],
                bbox=record.bbox.astype(np.float32),
                crop_box=acsm_square_box(record.bbox),
            )
            yield SourceUnit(record.rel_path, (item,))

    names = CUB_PART_NAMES
    parts_file = os.path.join(root, "parts", "parts.txt")
    if os.path.isfile(parts_file):
        with open(parts_file) as f:
            names = tuple(line.split(maxsplit=1)[1].strip() for line in f if line.strip())
    meta = {"cub_split": split}
    units = _limit(cub_units(), max_items)
    return Source("cub", "images", units, names, CUB_FLIP_PERMUTATION, extra_meta=meta)
