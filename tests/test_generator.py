"""Golden parity of the StyleGAN2 generator and upfirdn2d, and the checkpoint converter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.convert.state_dict import CheckpointError
from gangealing_jax.convert.stylegan2 import generator_variables_from_state, load_generator
from gangealing_jax.models.stylegan2 import (
    Generator,
    broadcast_w,
    style_mix,
    truncated_w_plus,
)
from gangealing_jax.ops.upfirdn2d import upfirdn2d
from tests.golden import assert_close, golden_cases, golden_dir, load_fixture, nchw_to_nhwc
from tests.tiny_models import tiny_generator

IMAGE_TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", golden_cases("ops_upfirdn2d"))
def test_upfirdn2d_golden(path):
    fx = load_fixture(path)
    x = jnp.asarray(nchw_to_nhwc(fx.inputs["x"]))
    combos = fx.meta["combos"]
    assert set(combos) == {k for k in fx.outputs}, "every output has a recorded call"
    for name, combo in combos.items():
        kernel = fx.inputs.get(f"kernel_{name}", fx.inputs.get("kernel_native_general"))
        if "args" in combo:
            a = combo["args"]
            out = upfirdn2d(
                x,
                kernel,
                up=(a["up_y"], a["up_x"]),
                down=(a["down_y"], a["down_x"]),
                pad=(a["pad_x0"], a["pad_x1"], a["pad_y0"], a["pad_y1"]),
            )
        else:
            out = upfirdn2d(x, kernel, up=combo["up"], down=combo["down"], pad=tuple(combo["pad"]))
        assert_close(out, nchw_to_nhwc(fx.outputs[name]), atol=1e-5, name=name)


def _generator(fx):
    config, variables = generator_variables_from_state(fx.state, str(fx.path), fx.meta["lr_mlp"])
    meta = fx.meta
    assert (config.size, config.style_dim, config.n_mlp) == (
        meta["size"],
        meta["style_dim"],
        meta["n_mlp"],
    )
    assert config.n_latent == meta["n_latent"] and config.num_layers == meta["num_layers"]
    return Generator(config), variables


@pytest.mark.parametrize("path", golden_cases("generator"))
def test_generator_golden(path):
    fx = load_fixture(path)
    G, variables = _generator(fx)
    n_latent = G.config.n_latent
    inject = fx.meta["inject_index"]
    psi = fx.meta["truncation"]
    mapping = jax.jit(lambda z: G.apply(variables, z, method=Generator.map))
    synth = jax.jit(
        lambda wp: G.apply(variables, wp, noise_mode="const", method=Generator.synthesize)
    )

    w = mapping(jnp.asarray(fx.inputs["z"]))
    assert_close(w, fx.outputs["w"], **IMAGE_TOL, name="w")

    def check(prefix, w_plus):
        if f"latent_{prefix}" in fx.outputs:
            assert_close(
                w_plus, fx.outputs[f"latent_{prefix}"], **IMAGE_TOL, name=f"latent_{prefix}"
            )
        img = synth(w_plus)
        assert_close(
            img, nchw_to_nhwc(fx.outputs[f"img_{prefix}"]), **IMAGE_TOL, name=f"img_{prefix}"
        )

    check("z", broadcast_w(w, n_latent))
    mean = jnp.asarray(fx.inputs["mean_latent"])
    check("trunc", truncated_w_plus(w, mean, psi, n_latent))
    check("trunc_mix", truncated_w_plus(w, mean, psi, n_latent, inject_index=inject))
    check("wplus", jnp.asarray(fx.inputs["w_plus"]))
    w1, w2 = mapping(jnp.asarray(fx.inputs["z1"])), mapping(jnp.asarray(fx.inputs["z2"]))
    check("mix", style_mix(w1, w2, inject, n_latent))


@pytest.mark.parametrize("pt", golden_cases("generator", ".pt"))
def test_generator_pt_matches_npz(pt):
    fx = load_fixture(pt.with_suffix(".npz"))
    config, from_pt = load_generator(pt)
    _, from_npz = generator_variables_from_state(fx.state, str(fx.path))
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_pt, from_npz)
    assert config.size == fx.meta["size"]


def test_random_noise_needs_key_and_differs():
    G, variables = tiny_generator()
    # noise strengths start at zero: make the noise visible
    variables = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 1.0 if "noise_strength" in jax.tree_util.keystr(path) else x, variables
    )
    z = jax.random.normal(jax.random.PRNGKey(0), (3, G.config.style_dim))
    with pytest.raises(Exception, match="noise"):
        G.apply(variables, z)
    a = G.apply(variables, z, rngs={"noise": jax.random.PRNGKey(1)})
    b = G.apply(variables, z, rngs={"noise": jax.random.PRNGKey(2)})
    c = G.apply(variables, z, rngs={"noise": jax.random.PRNGKey(1)})
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, c)


def _first(prefix, suffix=".npz"):
    path = golden_cases(prefix, suffix)[0].values[0]
    assert path.is_file(), f"no {prefix}*{suffix} fixture in {golden_dir()}"
    return path


def test_converter_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_generator(corrupt)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(_first("generator", ".pt").read_bytes()[:50_000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_generator(truncated)
    with pytest.raises(CheckpointError, match="no 'g_ema' weights"):
        load_generator(_first("stn", ".pt"))
    fx = load_fixture(_first("generator"))
    state = dict(fx.state)
    del state["convs.1.conv.modulation.weight"]
    with pytest.raises(CheckpointError, match="missing key 'convs.1.conv.modulation.weight'"):
        generator_variables_from_state(state, "x.pt")
    state = dict(fx.state)
    state["to_rgbs.0.conv.weight"] = state["to_rgbs.0.conv.weight"][:, :, :5]
    with pytest.raises(CheckpointError, match="to_rgbs.0.conv.weight.*expected"):
        generator_variables_from_state(state, "x.pt")
