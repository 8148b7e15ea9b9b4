"""The collapse monitor: statistics of the STN's warps that reveal a degenerate alignment.

GANgealing's known failure is a warp that satisfies the loss without aligning: zooming out until
border padding turns the output into flat wedges of edge colour, or into a flat patch of
background. The losses do not show it (a flat output can be perceptually close to a flat target
region, and it is its own mirror image), so the step also returns, from the warps it already has:

  collapse_zoom_out        mean over the batch of grid_zoom: 1 = identity, > 1 zooming out
  collapse_outside         fraction of sampling points outside the image ([-1, 1]^2)
  collapse_variance_ratio  mean over the batch of each congealed image's spatial variance over
                           that of its input (clipped at 10)

and `CollapseMonitor` warns once when one of them stays past its threshold for WINDOW iterations.
Each is a mean over rows, so the step's average over micro-batches and devices is exactly the
statistic of the whole batch, however it is split (a median would not be).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from gangealing_jax.losses.regularizers import grid_zoom

ZOOM_OUT_LIMIT = 3.0  # a grid spanning 3 image widths keeps a ninth of the image's pixels
VARIANCE_RATIO_LIMIT = 0.1  # congealed images with a tenth of their inputs' variance are flat
# Nearly all of the output made of padding. Not lower: the healthy faces run (posed inputs,
# zoomed in, congealed by zooming out) was measured at 0.44 at iteration 450; the collapsed
# butterflies run at 1.0.
OUTSIDE_LIMIT = 0.8
WINDOW = 200  # iterations a condition must hold: a transient excursion early on is no collapse
KEYS = ("collapse_zoom_out", "collapse_outside", "collapse_variance_ratio")


def warp_statistics(grid, congealed, inputs) -> dict:
    """The three statistics, () each, of sampling grids (M, H, W, 2), the congealed images
    (M, H, W, C) and the images the STN saw (N, S, S, C), M = N * k with rows image-major (each
    input's k congealed copies, e.g. one per head, follow each other)."""
    outside = jnp.max(jnp.abs(grid), axis=-1) > 1.0
    variance_out = jnp.mean(jnp.var(congealed, axis=(1, 2)), axis=-1)  # (M,)
    variance_in = jnp.mean(jnp.var(inputs, axis=(1, 2)), axis=-1)  # (N,)
    variance_in = jnp.repeat(variance_in, congealed.shape[0] // inputs.shape[0])
    # Clipped: a near-flat input must not let one row's ratio hide the rest of the batch.
    ratio = jnp.minimum(variance_out / jnp.maximum(variance_in, 1e-8), 10.0)
    return {
        "collapse_zoom_out": jnp.mean(grid_zoom(grid)),
        "collapse_outside": jnp.mean(outside.astype(grid.dtype)),
        "collapse_variance_ratio": jnp.mean(ratio),
    }


def collapse_reasons(metrics: dict) -> list[str]:
    """What in one set of logged metrics looks collapsed ([] when healthy or not logged)."""
    reasons = []
    if metrics.get("collapse_zoom_out", 1.0) > ZOOM_OUT_LIMIT:
        reasons.append(f"mean zoom-out {metrics['collapse_zoom_out']:.1f}x > {ZOOM_OUT_LIMIT:g}x")
    if metrics.get("collapse_variance_ratio", 1.0) < VARIANCE_RATIO_LIMIT:
        reasons.append(
            f"congealed variance {metrics['collapse_variance_ratio']:.3f} of the inputs' "
            f"< {VARIANCE_RATIO_LIMIT:g}"
        )
    if metrics.get("collapse_outside", 0.0) > OUTSIDE_LIMIT:
        reasons.append(
            f"{metrics['collapse_outside']:.0%} of samples outside the image > {OUTSIDE_LIMIT:.0%}"
        )
    return reasons


@dataclasses.dataclass
class CollapseMonitor:
    """Fed the logged metrics in iteration order; `update` returns the warning line once."""

    window: int = WINDOW
    hint: str = "try --config.stn.padding_mode=reflection or a lower --config.stn_lr"
    streak_start: int | None = None  # first iteration of the current run of collapsed logs
    fired_at: int | None = None
    reasons: list = dataclasses.field(default_factory=list)
    last: dict = dataclasses.field(default_factory=dict)
    worst: dict = dataclasses.field(default_factory=dict)

    def update(self, iteration: int, metrics: dict) -> str | None:
        stats = {k: float(metrics[k]) for k in KEYS if k in metrics}
        if not stats:
            return None
        self.last = stats
        for key, value in stats.items():
            worse = min if key == "collapse_variance_ratio" else max
            self.worst[key] = worse(self.worst.get(key, value), value)
        reasons = collapse_reasons(stats)
        if not reasons:
            self.streak_start = None
            return None
        if self.streak_start is None:
            self.streak_start = iteration
        if self.fired_at is not None or iteration - self.streak_start < self.window:
            return None
        self.fired_at, self.reasons = iteration, reasons
        return (
            f"warning: the STN looks collapsed at iteration {iteration} (since "
            f"{self.streak_start}): {'; '.join(reasons)}; {self.hint}"
        )

    def summary(self) -> dict:
        """For summary.json: whether it fired, when and why, and the last and worst values."""
        return {
            "warning": self.fired_at is not None,
            "fired_at": self.fired_at,
            "reasons": self.reasons,
            "last": self.last,
            "worst": self.worst,
            "thresholds": {
                "zoom_out": ZOOM_OUT_LIMIT,
                "variance_ratio": VARIANCE_RATIO_LIMIT,
                "outside": OUTSIDE_LIMIT,
                "window": self.window,
            },
        }
