"""The latent-direction explorer on the shipped generator: its files, and the sensitivity report."""

import json

import numpy as np
import pytest
from PIL import Image

from gangealing_jax import directions as cli
from gangealing_jax.training.directions import load_directions
from tests.tiny_models import identity_model_bundle

SMALL = ["--generator=embedded", "--num=2", "--samples=2", "--steps=3", "--num_w_samples=400"]


def test_explorer_writes_its_files_and_a_sensitivity_report(tmp_path, capsys):
    model = identity_model_bundle(tmp_path / "model")
    out = tmp_path / "out"
    assert (
        cli.main([*SMALL, "--method=sefa", "--layers=0-3", f"--out={out}", f"--model={model}"]) == 0
    )
    assert "sefa: 2 directions, W+ layers 0-3" in capsys.readouterr().out
    found = load_directions(out / "directions.npz")
    assert found.vectors.shape == (2, 128) and found.layers == (0, 4) and found.method == "sefa"
    assert np.all(found.std > 0)
    # 32 px images with 2 px padding: 3 columns of shifts, 2 rows of samples (1 per direction).
    side = lambda n: 2 + n * 34  # noqa: E731
    for k in range(2):
        assert Image.open(out / f"direction_{k:02d}.png").size == (side(3), side(2))
    assert Image.open(out / "overview.png").size == (side(3), side(2))
    report = json.loads((out / "sensitivity.json").read_text())
    assert [r["direction"] for r in report] == [0, 1]
    for record in report:
        # The untrained STN is the identity whatever the image: no pose moves, the image does.
        assert record["rotation_deg"] == pytest.approx(0, abs=1e-3)
        assert record["log_scale"] == pytest.approx(0, abs=1e-5)
        assert record["translation"] == pytest.approx(0, abs=1e-5)
        assert record["congealed_change"] > 1e-3 and record["image_change"] > 1e-3
    # A saved set is shown again as it is (learned directions arrive this way).
    again = tmp_path / "again"
    assert (
        cli.main(
            [*SMALL, "--method=learned", f"--directions={out / 'directions.npz'}", f"--out={again}"]
        )
        == 0
    )
    np.testing.assert_array_equal(load_directions(again / "directions.npz").vectors, found.vectors)
    # Same seed, same set and layers: the same pictures.
    assert (again / "overview.png").read_bytes() == (out / "overview.png").read_bytes()


def test_explorer_refuses_bad_arguments(tmp_path, capsys):
    for args, message in [
        (["--method=learned"], "needs --directions"),
        (["--method=sefa", "--layers=2-12"], "layers '2-12'"),
        (["--method=sefa", "--sigmas=3,-3"], "--sigmas"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli.main([*SMALL, *args, f"--out={tmp_path / 'x'}"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
