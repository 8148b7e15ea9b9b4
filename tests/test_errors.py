"""Every entry point ends bad input with one line, `error: ...`, and exit status 2; training configs
are checked before the work directory exists."""

import os
import pathlib
import subprocess
import sys

import pytest

from configs import default
from configs import test as test_config
from configs.gan import test as gan_test_config
from gangealing_jax import errors
from gangealing_jax.apps import animate, congeal, pck, propagate, video
from gangealing_jax.apps.model import load_model
from gangealing_jax.convert import perceptual as convert_perceptual
from gangealing_jax.convert.bundle import TRAINED_MODEL_KIND, load_bundle, save_bundle
from gangealing_jax.convert.stn import stn_config_from_dict
from gangealing_jax.training import config_checks, gangealing_loop
from gangealing_jax.training.config_checks import check_gan_config, check_gangealing_config
from tests.tiny_models import identity_model_bundle

REPO = pathlib.Path(__file__).resolve().parent.parent


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.pop(errors.DEBUG_ENV, None)
    return env


def test_each_command_line_entry_point_prints_one_line_and_exits_2(tmp_path):
    """As a user runs them: one process per entry point, all started at once (each pays jax's
    import, about 4 s)."""
    work = tmp_path / "work"
    commands = {
        "train": (
            ["gangealing_jax.train", "--config", "configs/test.py", f"--workdir={work}",
             "--config.batch=-4"],
            "error: --config.batch=-4: must be >= 1; e.g. --config.batch=40",
        ),
        "train_gan": (
            ["gangealing_jax.train_gan", "--config", "configs/gan/test.py", f"--workdir={work}",
             "--config.data.path=/no/such/data"],
            "error: --config.data.path=/no/such/data: no such prepared dataset; give an "
            "existing path",
        ),
        "train, a misspelt field": (
            ["gangealing_jax.train", "--config", "configs/test.py", f"--workdir={work}",
             "--config.batc=4"],
            "error: --config.batc=4: the config has no field 'batc'; did you mean 'batch'?",
        ),
        "train_directions, a field of no config": (
            ["gangealing_jax.train_directions", "--config", "configs/directions/test.py",
             f"--workdir={work}", "--config.reconstructor.nonsense=1"],
            "error: --config.reconstructor.nonsense=1: the config has no field 'nonsense'",
        ),
        "train_cluster_classifier": (
            ["gangealing_jax.train_cluster_classifier", "--model=/no/such/run",
             f"--workdir={work}", "--batch=0"],
            "error: --batch=0: must be >= 1; e.g. --batch=40",
        ),
        "pck": (
            ["gangealing_jax.apps.pck", "--model", "/no/such", "--data", "/no/such"],
            "error: /no/such: no such model; pass a training work directory",
        ),
    }  # fmt: skip
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=REPO,
            env=_env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for name, (argv, _) in commands.items()
    }
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, (name, stderr[-2000:])
        assert "Traceback" not in stderr and len(lines) == 1, (name, stderr[-2000:])
        assert lines[0].startswith(commands[name][1]), (name, lines[0])
    assert not work.exists()  # nothing was written before the bad value was found


def _main_exit(capsys, main, *argv):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return exit_.value.code, err


def test_apps_name_the_path_the_user_gave(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    out = tmp_path / "out"
    for main in (pck.main, congeal.main, animate.main):
        args = ("--model", empty, "--data", "/no/such", "--out", out)
        code, err = _main_exit(capsys, main, *(args[:4] if main is pck.main else args))
        # The folder as typed, not the t_ema/ bundle the loader looked for inside it.
        assert code == 2 and err.startswith(f"error: {empty}: holds no model (no model/ or t_ema/")
    for main in (propagate.main, video.main):
        flag = "--data" if main is propagate.main else "--input"
        code, err = _main_exit(
            capsys, main, "--model", "/no/such", flag, "x", "--out", out, "--dense_tracking"
        )
        assert code == 2 and err.startswith("error: /no/such: no such model")
    model = identity_model_bundle(tmp_path / "model")
    code, err = _main_exit(capsys, pck.main, "--model", model, "--data", tmp_path / "no_data")
    assert code == 2 and f"{tmp_path / 'no_data'} does not exist" in err
    # A converted STN bundle is a model, given itself or as the module folder of its parent.
    meta, variables = load_bundle(model, kind=TRAINED_MODEL_KIND)
    save_bundle(tmp_path / "converted" / "t_ema", "stn", meta["stn"], variables["stn"])
    for path in (tmp_path / "converted" / "t_ema", tmp_path / "converted"):
        assert load_model(path).stn.config == stn_config_from_dict(meta["stn"])
    code, err = _main_exit(capsys, convert_perceptual.main, "--out", out)
    assert code == 2 and "give exactly one trunk: --vgg, --simclr or --lpips-module" in err
    code, err = _main_exit(capsys, convert_perceptual.main, "--vgg", "/no/vgg.pth", "--out", out)
    assert code == 2 and err == "error: /no/vgg.pth: no such checkpoint file\n"
    assert not out.exists()
    monkeypatch.setenv(errors.DEBUG_ENV, "1")  # asked for: the traceback, not the line
    with pytest.raises(errors.CheckpointError, match="/no/such: no such model"):
        pck.main(["--model", "/no/such", "--data", "/no/such"])


def _with(config, **fields):
    config = config.copy_and_resolve_references()
    for dotted, value in fields.items():
        *parents, leaf = dotted.split("__")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


@pytest.mark.parametrize(
    "fields, devices, message",
    [
        ({"batch": 0}, 1, "--config.batch=0: must be >= 1; e.g. --config.batch=40"),
        ({"grad_accum": 3}, 1, "--config.batch=4: 4 is not divisible by --config.grad_accum (3); use 3 or 6"),
        ({}, 3, "--config.batch=4: 4 images per micro-batch (batch / grad_accum) do not split "
                "over 3 devices; use a multiple of 3"),
        ({"num_devices": 2}, 1, "--config.num_devices=2: only 1 devices are present; use 0"),
        ({"iters": 0}, 1, "--config.iters=0: must be >= 1"),
        ({"stn_lr": -1e-3}, 1, "--config.stn_lr=-0.001: must be > 0"),
        ({"compute__images_per_pass": -1}, 1, "--config.compute.images_per_pass=-1: must be >= 0"),
        ({"stn__padding_mode": "mirror"}, 1, "--config.stn.padding_mode='mirror': unknown name; "
                                             "choose one of zeros, border, reflection"),
        ({"loss__name": "l2"}, 1, "--config.loss.name='l2': unknown name; choose one of lpips"),
        ({"stn__transforms": ("affine",)}, 1, "--config.stn.transforms=('affine',): unknown"),
        ({"anneal_fn": "step"}, 1, "--config.anneal_fn='step': unknown name; choose one of"),
        ({"generator__checkpoint": "/no/g.pt"}, 1,
         "--config.generator.checkpoint=/no/g.pt: no such generator checkpoint"),
        ({"eval__data": "/no/eval"}, 1, "--config.eval.data=/no/eval: no such prepared dataset"),
        ({"loss__name": "lpips"}, 1, "--config.loss.weights is not set"),
    ],
)  # fmt: skip
def test_gangealing_config_checks_name_the_field_and_a_valid_value(fields, devices, message):
    with pytest.raises(errors.GangealingError) as info:
        check_gangealing_config(_with(test_config.get_config(), **fields), devices)
    assert str(info.value).startswith(message)


def test_shipped_configs_pass_and_a_bad_one_leaves_no_work_directory(tmp_path):
    check_gangealing_config(test_config.get_config(), 1)
    check_gangealing_config(_with(default.get_config(), loss__name="multiscale_structural"), 8)
    check_gan_config(gan_test_config.get_config(), 1)
    assert config_checks.EVAL_PROTOCOLS == pck.PROTOCOLS  # named twice across a layer boundary
    workdir = tmp_path / "run"
    with pytest.raises(errors.ConfigError, match="--config.batch=-4"):
        gangealing_loop.train(_with(test_config.get_config(), batch=-4), workdir)
    assert not workdir.exists()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"batch": 0}, "--config.batch=0: must be >= 1"),
        ({"model__resolution": 24}, "--config.model.resolution=24: must be a power of two"),
        ({"model__channels": (8, 8, 8)}, "--config.model.channels=(8, 8, 8): needs 2 positive"),
        ({"lr": 0.0}, "--config.lr=0.0: must be > 0"),
        ({"mixing": 1.5}, "--config.mixing=1.5: must be >= 0 and <= 1"),
    ],
)
def test_gan_config_checks(fields, message):
    with pytest.raises(errors.ConfigError) as info:
        check_gan_config(_with(gan_test_config.get_config(), **fields), 1)
    assert str(info.value).startswith(message)


def test_ctrl_c_outside_a_training_loop_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("GANGEALING_DEBUG", raising=False)

    @errors.entry_point
    def main():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == errors.INTERRUPTED_CODE == 130
    assert capsys.readouterr().err == "interrupted\n"
