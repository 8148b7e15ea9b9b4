"""The generators shipped in the package, by the names `generator.checkpoint` accepts.

Each was trained by `python -m gangealing_jax.train_gan --config configs/gan/procedural.py` on one
procedural family (see README.md in this folder for the exact commands).
"""

from __future__ import annotations

import pathlib

from gangealing_jax.convert.state_dict import CheckpointError

_HERE = pathlib.Path(__file__).resolve().parent

# name -> (file, the train_gan flags that made it)
EMBEDDED_GENERATORS = {
    "embedded": (_HERE / "generator.npz", ""),
    "embedded-butterflies": (
        _HERE / "generator_butterflies.npz",
        " --config.data.family=butterflies",
    ),
}


def embedded_generator(name: str) -> pathlib.Path:
    """The file of the shipped generator `name` (a key of EMBEDDED_GENERATORS)."""
    path, flags = EMBEDDED_GENERATORS[name]
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no {name} generator in this installation (reinstall the package, or train "
            f"one with `python -m gangealing_jax.train_gan --config configs/gan/procedural.py "
            f"--workdir runs/gan{flags}` and pass --config.generator.checkpoint=runs/gan/"
            "generator.npz)"
        )
    return path
