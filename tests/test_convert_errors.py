"""The converter's refusals: untrusted pickles, surplus keys, non-finite weights."""

import argparse

import numpy as np
import pytest

from gangealing_jax.convert import __main__ as convert_cli
from gangealing_jax.convert.state_dict import CheckpointError, read_checkpoint
from gangealing_jax.convert.stylegan2 import (
    discriminator_variables_from_state,
    generator_variables_from_state,
    load_generator,
)
from gangealing_jax.models.discriminator import DiscriminatorConfig
from tests.golden import golden_cases, load_fixture
from tests.test_discriminator import _torch_layout_state


def _generator_state() -> dict:
    path = golden_cases("generator", ".npz")[0].values[0]
    return dict(load_fixture(path).state)


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        convert_cli.main([str(a) for a in argv])
    return exit_.value.code, capsys.readouterr().err


class _WritesAFile:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_pickle_with_objects_is_refused_for_safety_without_torchs_unsafe_hint(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    path = tmp_path / "with_code.pt"
    marker = tmp_path / "written_by_the_pickle"
    torch.save({"g_ema": {"w": torch.ones(2)}, "args": _WritesAFile(marker)}, path)
    code, err = _cli(capsys, path, tmp_path / "out")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {path}: not a plain tensor checkpoint") and "refused" in err
    assert "for safety" in err and "weights_only" not in err
    assert not marker.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    code, err = _cli(capsys, junk, tmp_path / "out")
    assert code == 2 and "not a readable PyTorch checkpoint" in err and "weights_only" not in err
    assert not (tmp_path / "out").exists()


def test_the_reference_training_flags_beside_the_state_dicts_are_read(tmp_path):
    """Official checkpoints also hold `args`, an argparse.Namespace: plain data, allowed."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "official_layout.pt"
    torch.save({"g_ema": {"w": torch.ones(2)}, "args": argparse.Namespace(size=256)}, path)
    flat = read_checkpoint(path)
    assert list(flat) == ["g_ema/w"] and flat["g_ema/w"].tolist() == [1.0, 1.0]


def test_a_surplus_mapping_key_names_n_mlp_not_a_missing_key():
    state = _generator_state()
    n_mlp = sum(k.startswith("style.") and k.endswith(".weight") for k in state)
    state[f"style.{n_mlp + 1}.weight"] = state["style.1.weight"]
    with pytest.raises(CheckpointError) as info:
        generator_variables_from_state(state, "g.pt")
    message = str(info.value)
    assert f"unexpected mapping-network keys ['style.{n_mlp + 1}.weight']" in message
    assert f"n_mlp={n_mlp} layers" in message and "missing key" not in message


def test_unexpected_discriminator_keys_are_reported():
    state = _torch_layout_state(DiscriminatorConfig(size=16, channels=(8, 6, 4)))
    state["convs.1.extra.weight"] = np.zeros((4, 4), np.float32)
    with pytest.raises(
        CheckpointError, match=r"d.pt: unexpected discriminator keys \['convs.1.extra"
    ):
        discriminator_variables_from_state(state, "d.pt")


def test_non_finite_weights_are_refused_naming_the_key(tmp_path, capsys):
    state = _generator_state()
    state["convs.0.conv.weight"] = state["convs.0.conv.weight"].copy()
    state["convs.0.conv.weight"].flat[[3, 7]] = [np.nan, np.inf]
    path = tmp_path / "diverged.npz"
    np.savez(path, **{f"g_ema/{k}": v for k, v in state.items()})
    with pytest.raises(CheckpointError) as info:
        load_generator(path)
    assert "key 'convs.0.conv.weight' holds 2 non-finite values" in str(info.value)
    code, err = _cli(capsys, path, tmp_path / "out")
    assert code == 2 and f"{path} (g_ema): key 'convs.0.conv.weight'" in err
