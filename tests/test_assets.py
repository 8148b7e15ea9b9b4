"""The generators shipped in the package: loadable by name, one clear line when one is missing."""

import jax
import ml_collections
import numpy as np
import pytest

from configs import embedded
from gangealing_jax import assets
from gangealing_jax.convert.state_dict import CheckpointError
from gangealing_jax.errors import InputFileError
from gangealing_jax.training.config_checks import check_gangealing_config
from gangealing_jax.training.gangealing_setup import load_frozen_generator


def _generator_fields(checkpoint: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"checkpoint": checkpoint, "module": "g_ema", "lr_mlp": 0.01})


def test_config_checks_take_every_shipped_name_and_refuse_others():
    for name in assets.EMBEDDED_GENERATORS:
        config = embedded.get_config()
        config.generator.checkpoint = name
        check_gangealing_config(config, 1)
    config.generator.checkpoint = "embedded-moths"
    with pytest.raises(InputFileError, match="generator.checkpoint"):
        check_gangealing_config(config, 1)


def test_shipped_generators_load_by_name_and_differ():
    weights = {}
    for name in assets.EMBEDDED_GENERATORS:
        config, variables = load_frozen_generator(_generator_fields(name), jax.random.PRNGKey(0))
        assert (config.size, config.style_dim, config.channels) == (32, 128, (128, 128, 64, 32))
        weights[name] = np.asarray(variables["params"]["const"])
    first, second = weights.values()
    assert not np.allclose(first, second)  # two trainings, not one file twice


def test_a_missing_shipped_generator_names_the_file_and_the_command(tmp_path, monkeypatch):
    missing = tmp_path / "generator_butterflies.npz"
    flags = assets.EMBEDDED_GENERATORS["embedded-butterflies"][1]
    monkeypatch.setitem(assets.EMBEDDED_GENERATORS, "embedded-butterflies", (missing, flags))
    with pytest.raises(CheckpointError) as err:
        load_frozen_generator(_generator_fields("embedded-butterflies"), jax.random.PRNGKey(0))
    message = str(err.value)
    assert str(missing) in message and "--config.data.family=butterflies" in message
    assert "\n" not in message
