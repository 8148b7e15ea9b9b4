"""Host-side logging of scalar metrics (TensorBoard + JSON lines) and image grids (PNG + TensorBoard)."""

from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np
from PIL import Image

from gangealing_jax import atomic
from gangealing_jax.errors import GangealingError


class NonFiniteLossError(GangealingError, FloatingPointError):
    """A training metric became NaN or infinite."""


def check_finite(metrics: dict, step: int, checkpoint_dir: str | os.PathLike) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        names = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
        raise NonFiniteLossError(
            f"non-finite metric at step {step} ({names}); training stopped. The last good "
            f"checkpoint in {checkpoint_dir} is intact: lower the learning rate or check the inputs, "
            "then resume from it."
        )


def image_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """(N, H, W, C) images in [-1, 1] -> one uint8 grid (rows of `nrow`), torchvision-style."""
    images = np.asarray(images, dtype=np.float32)
    n, h, w, c = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), np.float32)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = img
    grid = np.clip((grid + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return grid[..., 0] if c == 1 else grid


def save_png(array_uint8: np.ndarray, path: str | os.PathLike) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array_uint8).save(path)


def truncate_metrics(path: str | os.PathLike, last_step: int) -> int:
    """Drops the records of `metrics.jsonl` past `last_step` (and a line cut short by a crash);
    returns how many were dropped. Rewritten atomically: a crash here loses nothing."""
    path = pathlib.Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            step = None  # a partial last line
        if step is None or step > last_step:
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped:
        atomic.write_text(path, "".join(kept))
    return dropped


class MetricsWriter:
    """Scalars to TensorBoard and `metrics.jsonl`; image grids to TensorBoard and PNG files.

    `last_step`: the step the run resumes after (0 for a fresh run). Records logged past it by an
    earlier, crashed run are dropped from `metrics.jsonl`, and TensorBoard is told to hide its
    events from there on (tensorboardX cannot rewrite its event files), so that the logs match
    the restored checkpoint and the steps read in order.
    """

    def __init__(
        self, workdir: str | os.PathLike, enabled: bool = True, last_step: int | None = None
    ):
        self.workdir = pathlib.Path(workdir)
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            from tensorboardX import SummaryWriter

            jsonl = self.workdir / "metrics.jsonl"
            purge = None
            if last_step is not None:
                truncate_metrics(jsonl, last_step)
                purge = last_step + 1
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=purge)
            self._jsonl = open(jsonl, "a")  # noqa: SIM115

    def scalars(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in metrics.items():
            self._tb.add_scalar(key, float(value), int(step))

    def images(self, step: int, name: str, images: np.ndarray, nrow: int | None = None) -> None:
        if not self.enabled:
            return
        grid = image_grid(images, nrow)
        save_png(grid, self.workdir / "images" / f"{name.replace('/', '_')}_{int(step):07d}.png")
        self._tb.add_image(name, grid, int(step), dataformats="HWC" if grid.ndim == 3 else "HW")

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
