"""The GANgealing objective against the reference's training step (unimodal and clusters+flips)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.convert.perceptual import weights_from_state
from gangealing_jax.convert.stn import stn_variables_from_state
from gangealing_jax.convert.stylegan2 import generator_variables_from_state
from gangealing_jax.losses.gangealing import Frozen, ObjectiveSettings, gangealing_objective
from gangealing_jax.losses.perceptual import lpips_distance
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stylegan2 import Generator
from tests.golden import assert_close, golden_cases, load_fixture, nchw_to_nhwc

IMAGE_TOL = dict(atol=1e-4, rtol=1e-4)


def _flax_leaf_of(state, key, value, path):
    """Where the torch tensor `key` lands in the converted Flax tree, converted like a weight."""
    _, base = stn_variables_from_state(state, path)
    marked_state = dict(state)
    marked_state[key] = np.asarray(value, np.float32)
    _, marked = stn_variables_from_state(marked_state, path)
    found = []

    def visit(p, a, b):
        if not np.array_equal(a, b):
            found.append((jax.tree_util.keystr(p), b))

    jax.tree_util.tree_map_with_path(visit, base, marked)
    assert len(found) == 1, f"{key} maps to {len(found)} leaves"
    return found[0]


def _leaf(tree, keystr):
    for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.tree_util.keystr(p) == keystr:
            return leaf
    raise KeyError(keystr)


def _lpips_weights(fx):
    lpips_path = golden_cases("lpips")[0].values[0]
    lpips_fx = load_fixture(lpips_path)
    assert lpips_fx.meta.get("seed") == fx.meta["lpips_seed"], "LPIPS fixture of another set"
    return weights_from_state(lpips_fx.state)


@pytest.mark.parametrize("path", golden_cases("gangealing_step"))
@pytest.mark.parametrize("variant", ["unimodal", "cluster"])
def test_gangealing_objective_golden(path, variant):
    fx = load_fixture(path)
    meta = fx.meta
    cluster = variant == "cluster"
    t_name, ll_name, out = ("t_k", "ll_k", "cluster/") if cluster else ("t", "ll", "")
    gconfig, gvars = generator_variables_from_state(fx.state_of("g_ema"), str(path), meta["lr_mlp"])
    t_state = fx.state_of(t_name)
    sconfig, svars = stn_variables_from_state(t_state, str(path))
    assert sconfig.flow_size == meta["flow_size"] and gconfig.size == meta["gen_size"]
    ll = fx.state_of(ll_name)
    frozen = Frozen(gvars, jnp.asarray(ll["directions"]), jnp.asarray(ll["lat_mean"]))
    trainable = {"stn": svars, "congealing": {"coefficients": jnp.asarray(ll["coefficients"])}}
    settings = ObjectiveSettings(
        inject=meta["inject"],
        padding_mode=meta["padding_mode"],
        sample_from_full_res=meta["sample_from_full_res"],
        freeze_ll=meta["freeze_ll"],
        flips=cluster and meta["cluster_flips"],
        tv_weight=meta["tv_weight"],
        flow_identity_weight=meta["flow_identity_weight"],
    )
    distance = jax.tree_util.Partial(lpips_distance, _lpips_weights(fx))
    objective = functools.partial(
        gangealing_objective, generator=Generator(gconfig), stn=STN(sconfig), settings=settings
    )
    z = jnp.asarray(fx.inputs["z_cluster" if cluster else "z"])
    assert not meta["randomize_noise"], "the fixture uses the generator's fixed noise"

    def total(trainable):
        terms = objective(trainable, frozen, z, None, meta["psi"], distance)
        return terms.total, terms

    (_, terms), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(trainable)

    for name in ("perceptual", "tv", "identity", "total"):
        assert_close(terms._asdict()[name], fx.outputs[f"{out}loss_{name}"], rtol=1e-4, name=name)
    if cluster:
        np.testing.assert_array_equal(terms.assignments, fx.outputs["cluster/assignments"])
        assert_close(
            terms.distances, fx.outputs["cluster/distance_collapsed"], rtol=1e-4, atol=1e-6
        )
        assert_close(terms.delta_flow, fx.outputs["cluster/delta_flow_assigned"], **IMAGE_TOL)
        assert_close(
            terms.aligned_pred, nchw_to_nhwc(fx.outputs["cluster/aligned_pred"]), **IMAGE_TOL
        )
    else:
        assert_close(terms.delta_flow, fx.outputs["delta_flow"], **IMAGE_TOL)
        assert_close(terms.unaligned, nchw_to_nhwc(fx.outputs["unaligned_in"]), **IMAGE_TOL)
        assert_close(terms.target, nchw_to_nhwc(fx.outputs["aligned_target"]), **IMAGE_TOL)
        assert_close(terms.aligned_pred, nchw_to_nhwc(fx.outputs["aligned_pred"]), **IMAGE_TOL)
        assert_close(
            terms.distances.reshape(-1),
            fx.outputs["perceptual_per_sample"].reshape(-1),
            rtol=1e-4,
            atol=1e-6,
        )

    def check_grad(actual, expected, name):
        tol = 1e-3 * float(np.max(np.abs(expected)))
        assert_close(actual, expected, atol=tol, name=name)

    check_grad(
        grads["congealing"]["coefficients"], fx.outputs[f"{out}grad/ll.coefficients"], "grad c"
    )
    for key in meta["grad_params"]:
        expected = fx.outputs[f"{out}grad/{key}"]
        where, expected_flax = _flax_leaf_of(t_state, key, expected, str(path))
        check_grad(_leaf(grads["stn"], where), expected_flax, f"grad {key}")
