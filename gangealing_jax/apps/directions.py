"""The latent-direction explorer: what each direction of a generator does, as images and numbers.

`explore` finds (GANSpace, SeFa) or loads (any directions.npz, learned ones included) a set of
directions and writes into the output directory:

* `directions.npz`: the set (directions, method, layers, per-direction std, mean w, scores);
* `direction_XX.png`: one grid per direction, rows = samples, columns = shifts of
  sigma * std along the direction in the chosen W+ layers;
* `overview.png`: one row per direction (the first sample), columns = the same shifts;
* with an alignment model, `sensitivity.json`: per direction, how far the shift moves the STN's
  similarity transform (rotation, log scale, translation) against how much it changes the
  congealed image. A direction the STN undoes (large pose change, small congealed change) is a
  pose direction; one that survives congealing is an appearance direction.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from gangealing_jax import atomic
from gangealing_jax.apps.model import AlignmentModel, stn_input
from gangealing_jax.errors import ConfigError
from gangealing_jax.models.stylegan2 import Generator, broadcast_w
from gangealing_jax.training.directions import (
    Directions,
    edit_w_plus,
    find_directions,
    load_directions,
    parse_layers,
    save_directions,
)
from gangealing_jax.training.gangealing_setup import load_frozen_generator
from gangealing_jax.training.metrics_log import image_grid


class ExploreResult(NamedTuple):
    directions: Directions
    files: list[pathlib.Path]  # every file written, in order
    sensitivity: list[dict] | None  # one record per direction, with a model


def generator_config(source: str) -> ml_collections.ConfigDict:
    """The `generator` config fields for a checkpoint path, "embedded" or "random"."""
    gcfg = ml_collections.ConfigDict()
    gcfg.checkpoint, gcfg.module, gcfg.lr_mlp = source, "g_ema", 0.01
    # "random": the untrained generator of the smoke-test config (no weights needed).
    gcfg.random_size, gcfg.random_style_dim, gcfg.random_n_mlp, gcfg.random_channels = 16, 32, 2, 16
    return gcfg


def parse_sigmas(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in str(text).split(","))
    except ValueError:
        raise ConfigError(f"--sigmas {text!r}: write two numbers, 'low,high'") from None
    if not low < high:
        raise ConfigError(f"--sigmas {text!r}: the first must be below the second")
    return low, high


def _write_png(path: pathlib.Path, grid: np.ndarray) -> pathlib.Path:
    with atomic.open_for_write(path) as f:
        Image.fromarray(grid).save(f, format="PNG")
    return path


def _renderer(generator: Generator):
    @jax.jit
    def render(variables, w_plus):  # the checkpoint's fixed noise: only the latent differs
        return generator.apply(variables, w_plus, noise_mode="const", method=Generator.synthesize)

    return render


def shift_grid(render, variables, w, direction, amounts, layers, n_latent) -> jnp.ndarray:
    """(S, T, H, W, 3) images of S base latents w (S, D) shifted by T amounts (T,)."""
    samples, steps = w.shape[0], amounts.shape[0]
    w_plus = broadcast_w(jnp.repeat(w, steps, axis=0), n_latent)  # (S*T, L, D), sample-major
    edited = edit_w_plus(w_plus, direction, jnp.tile(amounts, samples), layers)
    images = render(variables, edited)
    return images.reshape((samples, steps) + images.shape[1:])


def similarity_pose(matrix) -> dict:
    """(M, 2, 3) similarity matrices -> rotation (rad), log scale, translation (M, 2)."""
    a, b = matrix[:, 0, 0], matrix[:, 1, 0]
    return {
        "rotation": jnp.arctan2(b, a),
        "log_scale": 0.5 * jnp.log(a * a + b * b),
        "translation": matrix[:, :, 2],
    }


def _wrapped(angle):
    return jnp.abs(jnp.angle(jnp.exp(1j * angle)))


def sensitivity(
    model: AlignmentModel, render, variables, w, directions, amount: float, n_latent: int
) -> list:
    """Per direction, mean over samples and both signs of the shift `amount` (in stds)."""

    @jax.jit
    def congeal(stn_variables, images):
        out = model.stn.apply(
            stn_variables, stn_input(images, model.flow_size), **model.forward_settings
        )
        return out.image, similarity_pose(out.matrix)

    if model.stn.config.transforms[0] != "similarity":
        raise ConfigError(f"{model.path}: the sensitivity report needs a similarity stage first")
    base_images = render(variables, broadcast_w(w, n_latent))
    base_congealed, base_pose = congeal(model.variables, base_images)
    records = []
    for k in range(directions.vectors.shape[0]):
        amounts = jnp.asarray([-amount, amount]) * float(directions.std[k])
        images = shift_grid(
            render,
            variables,
            w,
            jnp.asarray(directions.vectors[k]),
            amounts,
            directions.layers,
            n_latent,
        )  # (S, 2, H, W, 3)
        moved = []
        for t in range(2):
            congealed, pose = congeal(model.variables, images[:, t])
            moved.append(
                {
                    "rotation_deg": float(
                        jnp.degrees(_wrapped(pose["rotation"] - base_pose["rotation"])).mean()
                    ),
                    "log_scale": float(jnp.abs(pose["log_scale"] - base_pose["log_scale"]).mean()),
                    "translation": float(
                        jnp.linalg.norm(
                            pose["translation"] - base_pose["translation"], axis=-1
                        ).mean()
                    ),
                    "congealed_change": float(jnp.abs(congealed - base_congealed).mean()),
                    "image_change": float(jnp.abs(images[:, t] - base_images).mean()),
                }
            )
        record = {"direction": k, "sigma": amount}
        record.update({key: (moved[0][key] + moved[1][key]) / 2 for key in moved[0]})
        # Pose moved per unit of appearance change that survives congealing: larger = pose.
        pose = math.radians(record["rotation_deg"]) + record["log_scale"] + record["translation"]
        record["pose_vs_appearance"] = pose / max(record["congealed_change"], 1e-8)
        records.append(record)
    return records


def explore(
    generator: str,
    method: str,
    out: str | os.PathLike,
    *,
    num: int = 8,
    layers: str = "all",
    sigmas: tuple[float, float] = (-3.0, 3.0),
    steps: int = 7,
    samples: int = 4,
    seed: int = 0,
    num_w_samples: int = 20_000,
    directions_path: str | os.PathLike | None = None,
    model: AlignmentModel | None = None,
) -> ExploreResult:
    """Finds or loads the directions and writes the explorer's files into `out`."""
    if method not in ("ganspace", "sefa", "learned"):
        raise ConfigError(f"--method {method!r}: use ganspace, sefa or learned")
    if method == "learned" and directions_path is None:
        raise ConfigError(
            "--method learned needs --directions: the directions.npz that "
            "`python -m gangealing_jax.train_directions` wrote"
        )
    if num < 1 or steps < 2 or samples < 1:
        raise ConfigError("--num and --samples must be >= 1 and --steps >= 2")
    low, high = sigmas
    out = pathlib.Path(out)
    g_key, w_key, z_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    gconfig, variables = load_frozen_generator(generator_config(generator), g_key)
    G = Generator(gconfig)
    if directions_path is not None:
        found = load_directions(directions_path)
        if found.vectors.shape[1] != gconfig.style_dim:
            raise ConfigError(
                f"{directions_path}: directions of dimension {found.vectors.shape[1]}, the "
                f"generator's W has {gconfig.style_dim}"
            )
        if layers != "all":  # an explicit range overrides the file's
            found = found._replace(layers=parse_layers(layers, gconfig.n_latent))
        found = found._replace(**{f: getattr(found, f)[:num] for f in ("vectors", "std", "scores")})
    else:
        span = parse_layers(layers, gconfig.n_latent)
        found = find_directions(
            method, G, variables, w_key, num=num, layers=span, num_samples=num_w_samples
        )
    files = [out / "directions.npz"]
    save_directions(files[0], found)
    render = _renderer(G)
    z = jax.random.normal(z_key, (samples, gconfig.style_dim))
    w = G.apply(variables, z, method=Generator.map)
    shifts = jnp.linspace(low, high, steps)
    overview = []
    for k in range(found.vectors.shape[0]):
        grid = shift_grid(
            render,
            variables,
            w,
            jnp.asarray(found.vectors[k]),
            shifts * found.std[k],
            found.layers,
            gconfig.n_latent,
        )
        overview.append(grid[0])
        flat = np.asarray(grid).reshape((-1,) + grid.shape[2:])
        files.append(_write_png(out / f"direction_{k:02d}.png", image_grid(flat, nrow=steps)))
    flat = np.concatenate([np.asarray(row) for row in overview])
    files.append(_write_png(out / "overview.png", image_grid(flat, nrow=steps)))
    report = None
    if model is not None:
        amount = max(abs(low), abs(high))
        report = sensitivity(model, render, variables, w, found, amount, gconfig.n_latent)
        files.append(atomic.write_json(out / "sensitivity.json", report, indent=2))
    return ExploreResult(found, files, report)


def summary_lines(result: ExploreResult) -> list[str]:
    d = result.directions
    lines = [
        f"{d.method}: {d.vectors.shape[0]} directions, W+ layers {d.layers[0]}-{d.layers[1] - 1}"
    ]
    for record in result.sensitivity or []:
        lines.append(
            f"  direction {record['direction']}: rotation {record['rotation_deg']:.2f} deg, "
            f"log scale {record['log_scale']:.3f}, shift {record['translation']:.3f}, congealed "
            f"change {record['congealed_change']:.3f} (pose/appearance "
            f"{record['pose_vs_appearance']:.2f})"
        )
    lines.append(f"wrote {len(result.files)} files into {result.files[0].parent}")
    return lines
