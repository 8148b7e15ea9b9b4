"""Latent directions of a StyleGAN2 generator in W: GANSpace, SeFa, and the file that holds them.

* GANSpace (Härkönen et al. 2020): principal components of mapped samples w = G.map(z), fitted by
  `training.pca` (the same fit the congealing vector uses).
* SeFa (Shen & Zhou 2021): the top eigenvectors of A^T A, where the rows of A are the
  style-modulation (affine) weight vectors of the chosen synthesis layers, each scaled to unit
  norm. A layer turns w into styles s = A w + b, so these are the unit directions of w that move
  the styles the most; they come from the weights alone.
* Learned directions (Voynov & Babenko 2020) are trained by `training.learned_directions` and
  stored in the same file format.

A direction set is edited per layer: an edit adds ``sigma * std_k * v_k`` to w in a chosen range
of W+ layers only, where std_k is the spread of mapped samples along v_k, so that sigmas mean the
same for every method.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax import atomic
from gangealing_jax.errors import ConfigError, InputFileError
from gangealing_jax.models.stylegan2 import Generator, GeneratorConfig
from gangealing_jax.training.latent_init import mapped_chunks, wspace_pca

METHODS = ("ganspace", "sefa", "learned")


class Directions(NamedTuple):
    """A set of K directions in W (D = style_dim).

    vectors: (K, D) float32 unit-norm rows (orthonormal for GANSpace and SeFa).
    std: (K,) float32 standard deviation of mapped w along each row: the unit of an edit.
    mean: (D,) float32 mean mapped w.
    method: "ganspace" | "sefa" | "learned".
    layers: (start, stop): the W+ layers [start, stop) the set was found for and edits move.
    scores: (K,) float32 what ranks the rows (explained variance, SeFa eigenvalue, or zeros).
    """

    vectors: np.ndarray
    std: np.ndarray
    mean: np.ndarray
    method: str
    layers: tuple[int, int]
    scores: np.ndarray


def _orient(rows: np.ndarray) -> np.ndarray:
    """Each row flipped so that its largest-magnitude entry is positive (PCA's convention)."""
    largest = rows[np.arange(rows.shape[0]), np.argmax(np.abs(rows), axis=1)]
    return rows * np.where(largest < 0, -1.0, 1.0)[:, None]


def parse_layers(text: str, n_latent: int) -> tuple[int, int]:
    """Layers "a-b" (inclusive, as users count layers), "a" or "all" -> [start, stop) W+ layers."""
    text = str(text).strip()
    try:
        if text in ("", "all"):
            start, stop = 0, n_latent
        elif "-" in text:
            first, last = text.split("-", 1)
            start, stop = int(first), int(last) + 1
        else:
            start = int(text)
            stop = start + 1
    except ValueError:
        raise ConfigError(f"layers {text!r}: write 'a-b' (inclusive), one index or 'all'") from None
    if not 0 <= start < stop <= n_latent:
        raise ConfigError(
            f"layers {text!r}: the generator has W+ layers 0-{n_latent - 1}; pick a range inside"
        )
    return start, stop


def modulation_weights(config: GeneratorConfig, variables, include_to_rgb: bool = False):
    """[(W+ index, (D, C_in) modulation weight)] of every synthesis layer, in synthesis order.

    The equalised-lr scale is left out: SeFa normalises every weight vector anyway.
    """
    params = variables["params"]
    layers = [(0, params["conv1"])]  # the 4x4 conv reads W+ layer 0
    if include_to_rgb:
        layers.append((1, params["to_rgb1"]))
    for k in range(2 * (config.log_size - 2)):
        layers.append((k + 1, params[f"convs_{k}"]))  # convs_{2i}, convs_{2i+1} read 1+2i, 2+2i
        if include_to_rgb and k % 2 == 1:
            layers.append((k + 2, params[f"to_rgbs_{k // 2}"]))
    return [
        (index, np.asarray(p["conv"]["modulation"]["weight"], np.float64)) for index, p in layers
    ]


def sefa(
    config: GeneratorConfig,
    variables,
    num: int,
    layers: tuple[int, int] | None = None,
    include_to_rgb: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(num, D) orthonormal SeFa directions and their (num,) eigenvalues, largest first.

    layers: [start, stop) W+ layers whose modulations are factorised (default: every layer).
    Rows are oriented so that their largest-magnitude entry is positive (as PCA's are).
    """
    start, stop = layers if layers is not None else (0, config.n_latent)
    chosen = [
        w
        for index, w in modulation_weights(config, variables, include_to_rgb)
        if start <= index < stop
    ]
    if not chosen:
        raise ConfigError(f"no modulated layer reads W+ layers {start}-{stop - 1}")
    a = np.concatenate([w / np.linalg.norm(w, axis=0, keepdims=True) for w in chosen], axis=1).T
    if not 1 <= num <= a.shape[1]:
        raise ConfigError(f"SeFa gives at most {a.shape[1]} directions (style_dim), asked {num}")
    eigenvalues, eigenvectors = np.linalg.eigh(a.T @ a)  # ascending
    top = np.argsort(eigenvalues)[::-1][:num]
    return _orient(eigenvectors[:, top].T), eigenvalues[top]


def sample_w(generator: Generator, variables, key: jax.Array, num_samples: int) -> np.ndarray:
    """(num_samples, D) float64 mapped samples."""
    return np.concatenate(
        [np.asarray(w, np.float64) for w in mapped_chunks(generator, variables, key, num_samples)]
    )


def spread(vectors: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """(K,) standard deviation of the samples' coordinates along each (unit) row."""
    coords = (samples - samples.mean(axis=0)) @ np.asarray(vectors, np.float64).T
    return coords.std(axis=0, ddof=1)


def find_directions(
    method: str,
    generator: Generator,
    variables,
    key: jax.Array,
    *,
    num: int,
    layers: tuple[int, int] | None = None,
    num_samples: int = 20_000,
    include_to_rgb: bool = False,
) -> Directions:
    """GANSpace or SeFa directions with their spread (from `num_samples` mapped samples)."""
    config = generator.config
    layers = layers if layers is not None else (0, config.n_latent)
    if method == "ganspace":
        # Exact PCA: with a few thousand samples the incremental fit's error is not worth having.
        basis = wspace_pca(generator, variables, key, num, num_samples, exact=True)
        vectors, scores = basis.components, basis.explained_variance
        std, mean = np.sqrt(basis.explained_variance), basis.mean
    elif method == "sefa":
        vectors, scores = sefa(config, variables, num, layers, include_to_rgb)
        samples = sample_w(generator, variables, key, num_samples)
        std, mean = spread(vectors, samples), samples.mean(axis=0)
    else:
        raise ConfigError(
            f"method {method!r}: use ganspace or sefa here (learned directions are trained "
            "by `python -m gangealing_jax.train_directions`)"
        )
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return Directions(f32(vectors), f32(std), f32(mean), method, tuple(layers), f32(scores))


def edit_w_plus(w_plus, direction, amount, layers: tuple[int, int]):
    """w_plus (N, L, D) moved by amount (N,) or () times direction (D,) in layers [start, stop).

    Layers outside the range are returned bit for bit.
    """
    start, stop = layers
    index = jnp.arange(w_plus.shape[1])[None, :, None]
    inside = (index >= start) & (index < stop)  # (1, L, 1)
    shift = jnp.reshape(jnp.asarray(amount, w_plus.dtype), (-1, 1, 1)) * direction  # (N|1, 1, D)
    return jnp.where(inside, w_plus + shift, w_plus)


def save_directions(path: str | os.PathLike, directions: Directions) -> None:
    """directions.npz, written atomically."""
    with atomic.open_for_write(path) as f:
        np.savez(
            f,
            directions=directions.vectors,
            std=directions.std,
            mean=directions.mean,
            scores=directions.scores,
            method=np.asarray(directions.method),
            layers=np.asarray(directions.layers, np.int64),
        )


def load_directions(path: str | os.PathLike) -> Directions:
    """A directions.npz (from the explorer or the learned-directions trainer)."""
    try:
        with np.load(path) as data:
            fields = {k: data[k] for k in ("directions", "std", "mean", "method", "layers")}
            scores = data["scores"] if "scores" in data.files else np.zeros(len(data["std"]))
    except (OSError, ValueError, KeyError) as err:
        raise InputFileError(
            f"{path}: not a readable directions.npz ({err}); write one with "
            "`python -m gangealing_jax.directions`"
        ) from None
    vectors = np.asarray(fields["directions"], np.float32)
    if vectors.ndim != 2 or fields["std"].shape != (vectors.shape[0],):
        raise InputFileError(f"{path}: directions must be (K, D) with K spreads")
    start, stop = (int(x) for x in fields["layers"])
    return Directions(
        vectors,
        np.asarray(fields["std"], np.float32),
        np.asarray(fields["mean"], np.float32),
        str(fields["method"]),
        (start, stop),
        np.asarray(scores, np.float32),
    )
