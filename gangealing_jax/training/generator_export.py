"""Export of a trained StyleGAN2 generator: a 'generator' bundle with its mean w, and the same
packed into one `.npz` (the form `load_generator` and `generator.checkpoint` take, and the
package ships as its embedded generator).

    <directory>/        bundle (model.json, variables) + mean_latent.npy
    <directory>.npz     both in one file
"""

from __future__ import annotations

import functools
import pathlib

import jax
import numpy as np

from gangealing_jax import atomic
from gangealing_jax.convert.bundle import load_bundle, pack_bundle, save_bundle
from gangealing_jax.convert.stylegan2 import config_to_dict
from gangealing_jax.models.stylegan2 import Generator, mean_latent
from gangealing_jax.training import parallel

MEAN_LATENT_FILE = "mean_latent.npy"


def export_generator(directory, generator: Generator, variables, key, num_samples: int):
    """Writes `variables` (replicated device arrays, e.g. the EMA generator's) as a 'generator'
    bundle plus its mean w over `num_samples` mapped z, then packs both into `<directory>.npz`.

    Written beside and swapped in by renames (`atomic`), so an interrupted export keeps the
    previous one.
    """
    directory = pathlib.Path(directory).absolute()
    tmp, _ = atomic.staging_paths(directory)
    variables = parallel.host_copy(variables)
    w_mean = _mean_latent_fn(generator, num_samples)(variables, key)
    if jax.process_index() == 0:
        atomic.begin_directory(directory)
    parallel.sync_processes("export_start")
    try:
        save_bundle(tmp, "generator", config_to_dict(generator.config), variables)
        if jax.process_index() == 0:
            np.save(tmp / MEAN_LATENT_FILE, np.asarray(w_mean, np.float32))
            atomic.commit_directory(directory)
            pack_generator(directory)
    except BaseException:
        if jax.process_index() == 0:
            atomic.abort_directory(directory)
        raise
    parallel.sync_processes("export_done")
    return directory


def pack_generator(directory) -> pathlib.Path:
    """`<directory>.npz`: the exported generator and its mean w packed into one file."""
    directory = pathlib.Path(directory)
    config, variables = load_bundle(directory, kind="generator")
    extra = {"mean_latent": read_mean_latent(directory)}
    return pack_bundle(directory.with_suffix(".npz"), "generator", config, variables, extra)


def read_mean_latent(directory) -> np.ndarray:
    """(1, style_dim) mean w stored with an exported generator."""
    path = pathlib.Path(directory) / MEAN_LATENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the generator in {directory} has no mean w")
    return np.load(path)


@functools.lru_cache(maxsize=8)
def _mean_latent_fn(generator: Generator, num_samples: int):
    return jax.jit(lambda variables, key: mean_latent(generator, variables, key, num_samples))
