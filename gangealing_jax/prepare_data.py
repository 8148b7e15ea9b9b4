"""Prepare an image folder, a video, SPair-71K or CUB-200-2011 as a gangealing_jax dataset.

    python -m gangealing_jax.prepare_data --input data/cats --out data/cats_256 --size 256
    python -m gangealing_jax.prepare_data --input clip.mp4 --out data/clip --pad border
    python -m gangealing_jax.prepare_data --format spair --input data/SPair-71k \\
        --spair_category cat --out data/spair_cat_256 --size 256
    python -m gangealing_jax.prepare_data --format cub --input data/CUB_200_2011 \\
        --out data/cub_val_256 --size 256 [--cub_acsm_mat data/val_cub_cleaned.mat]

Writes the prepared format of gangealing_jax.data.prepared, plus skipped.json (every input that
could not be read, and why), items.json (the source of every item, in order) and transforms.npy
((N, 4) scale_x, scale_y, offset_x, offset_y: prepared = source * scale + offset, per item).
Unreadable inputs are skipped and reported, never fatal; so are images over --max_pixels (refused
from their header, never decoded). Images smaller than --size are upscaled and counted in the
summary. Images pass through a staging file on disk, so memory stays bounded by --chunk whatever
the dataset size. --out must be empty or new: files already there are replaced only with
--overwrite.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from gangealing_jax.data import image_io, sources
from gangealing_jax.data.prepared import PreparedDataset, PreparedWriter
from gangealing_jax.errors import ConfigError, InputFileError, entry_point

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif", ".mpg", ".mpeg")
DEFAULT_PAD = {"folder": "center", "video": "center", "spair": "border", "cub": None}
_STAGING = ".images.staging"
_SUMMARY_LIMIT = 20
_MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's own decompression-bomb limit
# Every name prepare() writes into --out; only a failed run's leftovers are replaced unasked.
_WRITTEN = ("meta.json", "images.npy", "keypoints.npy", "bboxes.npy", "pairs.npy",
            "transforms.npy", "items.json", "skipped.json", _STAGING)  # fmt: skip
_LEFTOVERS = ("skipped.json", _STAGING)
_EXAMPLES = dict(size=256, chunk=256, workers=4, max_pixels=10**8, max_items=1000, frame_step=2)


class NoReadableImagesError(InputFileError):
    """Every input was skipped (or there were none), so there is nothing to write."""


class Skipped(NamedTuple):
    name: str
    reason: str


class PrepareReport(NamedTuple):
    dataset: PreparedDataset
    total: int  # units seen (files, frames, pairs or images)
    skipped: list[Skipped]
    ignored: tuple[str, ...]
    unit_word: str
    upscaled: tuple[str, ...] = ()  # items smaller than the target size, enlarged to fit

    def summary(self) -> str:
        text = _summary(self.total, self.skipped, self.ignored, self.unit_word, self.dataset.path)
        if not self.upscaled:
            return text
        shown = ", ".join(self.upscaled[:_SUMMARY_LIMIT]) + (
            ", ..." * (len(self.upscaled) > _SUMMARY_LIMIT)
        )
        return text + (
            f"\nwarning: {len(self.upscaled)} of {len(self.dataset)} items were smaller than "
            f"{self.dataset.resolution} pixels and were upscaled (blurry): {shown}"
        )


class _Prepared(NamedTuple):
    image: np.ndarray  # (size, size, 3) uint8
    keypoints: np.ndarray  # (P, 3) float32
    bbox: np.ndarray  # (4,) float32
    transform: np.ndarray  # (4,) float32 scale_x, scale_y, offset_x, offset_y
    upscaled: bool  # the source was enlarged to fit


def _summary(total, skipped, ignored, unit_word, out_dir) -> str:
    listed = ", ".join(f"{s.name} ({s.reason})" for s in skipped[:_SUMMARY_LIMIT])
    lines = [f"skipped {len(skipped)} of {total} {unit_word}" + (f": {listed}" if skipped else "")]
    if len(skipped) > _SUMMARY_LIMIT:
        lines[0] += ", ..."
    if skipped:
        lines.append(f"every skipped input and its reason is listed in {out_dir}/skipped.json")
    if ignored:
        shown = ", ".join(ignored[:_SUMMARY_LIMIT]) + (
            ", ..." if len(ignored) > _SUMMARY_LIMIT else ""
        )
        folders = (
            " (sub-folders are read with --recursive)"
            if any(i.endswith("/") for i in ignored)
            else ""
        )
        lines.append(f"not read, as they are not image files{folders}: {shown}")
    return "\n".join(lines)


def _prepare_item(
    item: sources.SourceItem, read_exif, size, pad, background, max_pixels
) -> _Prepared:
    if item.frame is not None:
        image = item.frame
    else:
        image = image_io.load_rgb(item.path, background, read_exif, max_pixels)
    height, width = image.shape[:2]
    if item.expected_size is not None and item.expected_size != (width, height):
        raise image_io.ImageReadError(
            item.path or item.name,
            f"image is {width}x{height} but its annotation was made on "
            f"{item.expected_size[0]}x{item.expected_size[1]}",
        )
    if item.crop_box is not None:
        fitted = image_io.crop_box_and_resize(image, item.crop_box, size)
    else:
        fitted = image_io.pad_and_resize(image, size, pad)
    if item.keypoints is None:
        keypoints = np.zeros((0, 3), np.float32)
    else:  # invisible points are stored as (0, 0, 0), as the reference stores them
        keypoints = fitted.map_points(item.keypoints) * item.keypoints[:, 2:3]
    if item.bbox is None:
        bbox = np.array([0, 0, size - 1, size - 1], np.float32)
    else:
        bbox = fitted.map_points(np.reshape(item.bbox, (2, 2))).reshape(4)
    transform = (fitted.scale_x, fitted.scale_y, fitted.offset_x, fitted.offset_y)
    upscaled = max(fitted.scale_x, fitted.scale_y) > 1
    return _Prepared(fitted.image, keypoints, bbox, np.asarray(transform, np.float32), upscaled)


def _prepare_unit(unit: sources.SourceUnit, read_exif, size, pad, background, max_pixels):
    """The unit's prepared items, or a Skipped saying which input failed and why."""
    if unit.error is not None:
        return Skipped(unit.name, unit.error)
    prepared = []
    for item in unit.items:
        try:
            prepared.append(_prepare_item(item, read_exif, size, pad, background, max_pixels))
        except (ValueError, OSError) as err:  # ImageReadError, or pixels no resize accepts
            reason = err.reason if isinstance(err, image_io.ImageReadError) else repr(err)
            prefix = "" if item.name == unit.name else f"{item.name}: "
            return Skipped(unit.name, prefix + reason)
    return prepared


def _chunks(units: Iterable, chunk: int) -> Iterator[list]:
    batch = []
    for unit in units:
        batch.append(unit)
        if len(batch) == chunk:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_output(out_dir: str, overwrite: bool) -> None:
    """Refuses a used --out unless overwrite; then removes only what an earlier run wrote."""
    present = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    held = [name for name in present if name not in _LEFTOVERS]
    if held and not overwrite:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise InputFileError(
            f"--out {out_dir} already holds {shown}; choose an empty or new folder, or pass "
            "--overwrite to replace the prepared files there (other files are left alone)"
        )
    for name in present:
        if name in _WRITTEN:
            os.remove(os.path.join(out_dir, name))


def _check_settings(**flags) -> None:
    """Numeric settings (None: unset), named as their flags, before any input is read."""
    for flag, value in flags.items():
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ConfigError(f"--{flag} {value}: must be >= 1, e.g. --{flag} {_EXAMPLES[flag]}")


def prepare(
    source: sources.Source,
    out_dir: str,
    size: int,
    pad: str | None = None,
    *,
    chunk: int = 256,
    workers: int = 1,
    background=image_io.WHITE,
    progress: bool = False,
    input_path: str | None = None,
    max_pixels: int | None = _MAX_PIXELS,
    overwrite: bool = False,
) -> PrepareReport:
    """Read every unit of `source`, fit it to size x size and write the prepared dataset.

    pad: a mode of image_io.PAD_MODES; None takes the source's default (center for folders and
    videos, border for SPair). CUB items carry their own ACSM crop box and accept no pad mode.
    max_pixels: larger image files are skipped without being decoded (None: no limit).
    overwrite: replace the files of `out_dir` (else it must be empty or new).
    """
    _check_settings(size=size, chunk=chunk, workers=workers, max_pixels=max_pixels)
    if pad is None:
        pad = DEFAULT_PAD[source.kind]
    elif source.kind == "cub":
        raise ConfigError("--pad: CUB is cropped around its bounding boxes as ACSM does; drop it")
    elif source.kind == "spair" and pad not in ("border", "zero"):
        raise ConfigError(f"--pad {pad}: SPair keeps whole images; use --pad border or zero")
    if pad is not None and pad not in image_io.PAD_MODES:
        raise ConfigError(f"--pad {pad}: unknown pad mode; choose one of {image_io.PAD_MODES}")
    _check_output(out_dir, overwrite)
    os.makedirs(out_dir, exist_ok=True)
    staging_path = os.path.join(out_dir, _STAGING)
    skipped: list[Skipped] = []
    names, keypoints, bboxes, transforms, upscaled = [], [], [], [], []
    total = 0
    work = (source.read_exif, size, pad, background, max_pixels)
    try:
        with (
            open(staging_path, "wb") as staging,
            concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool,
            tqdm(desc=f"preparing {source.unit_word}", disable=not progress) as bar,
        ):
            for batch in _chunks(source.units, chunk):
                results = pool.map(lambda u: _prepare_unit(u, *work), batch)
                for unit, result in zip(batch, results, strict=True):
                    total += 1
                    if isinstance(result, Skipped):
                        skipped.append(result)
                        continue
                    for item, prepared in zip(unit.items, result, strict=True):
                        staging.write(np.ascontiguousarray(prepared.image).tobytes())
                        names.append(item.name)
                        keypoints.append(prepared.keypoints)
                        bboxes.append(prepared.bbox)
                        transforms.append(prepared.transform)
                        if prepared.upscaled:
                            upscaled.append(item.name)
                bar.update(len(batch))
        _write_json(out_dir, "skipped.json", _skipped_record(total, skipped, source.unit_word))
        if not names:
            raise NoReadableImagesError(
                f"nothing to prepare from {input_path or source.kind}: "
                + _summary(total, skipped, source.ignored, source.unit_word, out_dir)
            )
        dataset = _write_dataset(
            source, out_dir, size, pad, staging_path, names, keypoints, bboxes, transforms,
            chunk, {"input": input_path, "skipped": len(skipped), "upscaled": len(upscaled)},
        )  # fmt: skip
    finally:
        if os.path.exists(staging_path):
            os.remove(staging_path)
    return PrepareReport(dataset, total, skipped, source.ignored, source.unit_word, tuple(upscaled))


def _write_dataset(
    source, out_dir, size, pad, staging_path, names, keypoints, bboxes, transforms, chunk, info
) -> PreparedDataset:
    count = len(names)
    meta = {"pad": pad if source.kind != "cub" else "acsm_box_crop", **info}
    meta.update(source.extra_meta or {})
    writer = PreparedWriter(
        out_dir, count, size, source.keypoint_names, source.flip_permutation, source.kind, meta
    )
    staged = np.memmap(staging_path, np.uint8, "r", shape=(count, size, size, 3))
    keypoints = np.stack(keypoints).astype(np.float32)  # (N, P, 3)
    bboxes = np.stack(bboxes).astype(np.float32)  # (N, 4)
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        writer.write(start, staged[start:stop], keypoints[start:stop], bboxes[start:stop])
    del staged
    np.save(os.path.join(out_dir, "transforms.npy"), np.stack(transforms))
    _write_json(out_dir, "items.json", names)
    # Units are dropped whole, so the items of paired sources stay (source, target) neighbours.
    pairs = np.arange(count).reshape(-1, 2) if source.paired else np.zeros((0, 2), np.int64)
    return writer.finish(pairs)


def _skipped_record(total, skipped, unit_word) -> dict:
    return {
        "total": total,
        "unit": unit_word,
        "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
    }


def _write_json(out_dir, name, value) -> None:
    with open(os.path.join(out_dir, name), "w") as f:
        json.dump(value, f, indent=1)


def _parse_background(text: str) -> tuple[int, int, int]:
    named = {"white": (255, 255, 255), "black": (0, 0, 0)}
    if text in named:
        return named[text]
    parts = [int(v) for v in text.split(",")]
    if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
        raise argparse.ArgumentTypeError(f"background must be white, black or R,G,B; got {text}")
    return tuple(parts)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gangealing_jax.prepare_data", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add = p.add_argument
    add("--input", required=True, help="image folder, video file, SPair-71k or CUB_200_2011 root")
    add("--out", required=True, help="output directory (empty or new, unless --overwrite)")
    add("--overwrite", action="store_true", help="replace the files already in --out")
    add("--size", type=int, default=256, help="side of the square prepared images")
    add("--max_pixels", type=int, default=_MAX_PIXELS, help="skip larger images, undecoded")
    add(
        "--pad",
        choices=image_io.PAD_MODES,
        default=None,
        help="how to make images square: center = centre crop, border = pad with edge pixels, "
        "zero = pad with black, resize_small_side = resize the shorter side then centre "
        "crop, none = plain resize (default: center; border for SPair; CUB uses ACSM crops)",
    )
    add(
        "--format",
        choices=("auto", "folder", "video", "spair", "cub"),
        default="auto",
        help="kind of input (auto: a folder, or a video by its extension)",
    )
    add("--recursive", action="store_true", help="also read images in sub-folders")
    add("--max_items", type=int, default=None, help="stop after this many files/frames/pairs")
    add("--frame_step", type=int, default=1, help="keep every n-th video frame")
    add("--spair_category", default=None, choices=sorted(sources.SPAIR_FLIP_PERMUTATIONS))
    add("--spair_split", default="test", choices=("trn", "val", "test"))
    add(
        "--cub_split",
        default="acsm_val",
        choices=("acsm_val", "train", "test", "all"),
        help="acsm_val: ACSM's validation split (needs scipy and val_cub_cleaned.mat)",
    )
    add("--cub_acsm_mat", default=None, help="path of ACSM's val_cub_cleaned.mat")
    add(
        "--background",
        type=_parse_background,
        default=(255, 255, 255),
        help="colour behind transparent pixels: white, black or R,G,B",
    )
    add("--chunk", type=int, default=256, help="images held in memory at a time")
    add("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding threads")
    add("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p  # fmt: skip


def _source_from_args(args) -> sources.Source:
    kind = args.format
    if kind == "auto":
        if args.spair_category is not None:
            kind = "spair"
        elif os.path.isfile(args.input):
            if not args.input.lower().endswith(VIDEO_EXTENSIONS):
                raise ConfigError(
                    f"--input {args.input} is a file but not a known video; pass --format"
                )
            kind = "video"
        else:
            kind = "folder"
    if kind == "folder":
        return sources.folder_source(args.input, args.recursive, args.max_items)
    if kind == "video":
        return sources.video_source(args.input, args.frame_step, args.max_items)
    if kind == "spair":
        if args.spair_category is None:
            raise ConfigError("--format spair needs --spair_category")
        return sources.spair_source(
            args.input, args.spair_category, args.spair_split, args.max_items
        )
    return sources.cub_source(args.input, args.cub_split, args.cub_acsm_mat, args.max_items)


@entry_point
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    names = ("size", "chunk", "workers", "max_pixels", "max_items", "frame_step")
    _check_settings(**{name: getattr(args, name) for name in names})
    # Pillow refuses images over twice its own limit on open; --max_pixels decides instead.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, args.max_pixels)
    source = _source_from_args(args)
    report = prepare(
        source, args.out, args.size, args.pad, chunk=args.chunk, workers=args.workers,
        background=args.background, progress=args.progress, input_path=args.input,
        max_pixels=args.max_pixels, overwrite=args.overwrite,
    )  # fmt: skip
    print(report.summary())
    print(f"wrote {len(report.dataset)} items of {args.size}x{args.size} pixels to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
