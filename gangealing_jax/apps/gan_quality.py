"""Score a StyleGAN2 generator against real images with the weight-free quality measure.

    python -m gangealing_jax.apps.gan_quality --generator runs/gan/generator.npz \
        --data procedural [--samples 1000] [--family faces]

--generator: a generator .npz / bundle directory, or "embedded" / "embedded-butterflies" (the
generators shipped with the package). --data: a prepared dataset at the generator's resolution,
or "procedural": held-out images of the procedural family (--family, --data_seed,
--clutter_range; the defaults match configs/gan/procedural.py but draw other images). Prints
JSON: the Fréchet and unbiased kernel distances of training/gan_quality.py (comparable only with
each other, not with published FID).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from gangealing_jax.errors import ConfigError, InputFileError, entry_point

PROCEDURAL = "procedural"


def load(source: str):
    """(GeneratorConfig, variables) of a generator file, directory or a shipped one's name."""
    from gangealing_jax.assets import EMBEDDED_GENERATORS, embedded_generator
    from gangealing_jax.convert.stylegan2 import load_generator
    from gangealing_jax.models.stylegan2 import GeneratorConfig

    path = str(embedded_generator(source)) if source in EMBEDDED_GENERATORS else source
    try:
        config, variables = load_generator(path)
    except FileNotFoundError as err:
        raise InputFileError(f"--generator {source}: {err}") from None
    if not isinstance(config, GeneratorConfig):
        raise InputFileError(
            f"--generator {source}: a {type(config).__name__}; the measure samples the "
            "project's StyleGAN2 generators (train_gan's generator.npz, converted .pt)"
        )
    return config, variables


def real_images(data: str, count: int, resolution: int, *, family: str, seed: int, clutter):
    """(N, R, R, 3) uint8: `count` images of a prepared dataset (a fixed random subset) or of
    the procedural family."""
    from gangealing_jax.data import families
    from gangealing_jax.data.prepared import PreparedDataset

    if data == PROCEDURAL:
        try:
            config = families.family_config(family, resolution=resolution, clutter_range=clutter)
            module = families.family_module(family)
        except ValueError as err:
            raise ConfigError(f"--family {family}: {err}") from None
        return module.generate(count, seed, config).images
    try:
        images = PreparedDataset(data).images
    except FileNotFoundError as err:
        raise InputFileError(f"--data {data}: {err}") from None
    if images.shape[1:] != (resolution, resolution, 3):
        raise InputFileError(
            f"--data {data}: its images are {list(images.shape[1:])}; the generator makes "
            f"{resolution}x{resolution}: prepare the data with --size {resolution}"
        )
    rows = np.random.default_rng(seed).permutation(len(images))[: min(count, len(images))]
    return np.asarray(images[np.sort(rows)])


def measure(generator: str, data: str, *, samples: int = 1000, seed: int = 0, family="faces",
            data_seed: int = 1, clutter=(1, 4)) -> dict:  # fmt: skip
    from gangealing_jax.models.random_features import DEFAULT_SEED, DEFAULT_STAGES
    from gangealing_jax.models.stylegan2 import Generator
    from gangealing_jax.training import gan_quality

    if samples < 2:
        raise ConfigError(f"--samples {samples}: the measures need 2 or more")
    config, variables = load(generator)
    if config.size % 8:
        raise InputFileError(
            f"--generator {generator}: makes {config.size} px images; the measure's net needs "
            "sides that are multiples of 8"
        )
    real = real_images(
        data, samples, config.size, family=family, seed=data_seed, clutter=tuple(clutter)
    )
    fake = gan_quality.generator_features(
        Generator(config), variables, jax.random.PRNGKey(seed), samples
    )
    scores = gan_quality.scores(gan_quality.image_features(real), fake)
    return {
        "generator": generator,
        "data": data,
        "real_images": int(len(real)),
        "samples": int(samples),
        "resolution": int(config.size),
        **scores.as_dict(),
        "feature_net": f"seed {DEFAULT_SEED}, widths {[list(s) for s in DEFAULT_STAGES]}",
    }


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--generator", required=True, help="generator .npz / bundle directory, or embedded")
    add("--data", required=True, help="prepared dataset directory, or procedural")
    add("--samples", type=int, default=1000, help="generated images (and real ones, at most)")
    add("--seed", type=int, default=0, help="latents and noise of the generated images")
    add("--family", default="faces", help="procedural family (--data procedural)")
    add("--data_seed", type=int, default=1, help="procedural seed (training used 0) / subset")
    add("--clutter_range", default="1,4", help="procedural background shapes: low,high")
    args = parser.parse_args(argv)
    try:
        clutter = tuple(int(v) for v in args.clutter_range.split(","))
    except ValueError:
        clutter = ()
    if len(clutter) != 2:
        raise ConfigError(f"--clutter_range {args.clutter_range!r}: write two integers, low,high")
    result = measure(
        args.generator,
        args.data,
        samples=args.samples,
        seed=args.seed,
        family=args.family,
        data_seed=args.data_seed,
        clutter=clutter,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
