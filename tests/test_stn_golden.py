"""Golden parity of the spatial transformer (forward, iterations, output resolution, alpha, flips,
keypoints, clustering heads unfolded or assigned) and its checkpoint converter."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.apps.points import (
    choose_flips,
    congealed_points_from_output,
    mirror,
    source_points_from_output,
    transfer_points_from_outputs,
)
from gangealing_jax.convert.convert_checkpoint import convert_checkpoint
from gangealing_jax.convert.state_dict import CheckpointError
from gangealing_jax.convert.stn import load_stn, stn_variables_from_state
from gangealing_jax.models.stn import STN, unfold_heads
from tests.golden import assert_close, golden_cases, load_fixture, nchw_to_nhwc

IMAGE_TOL = dict(atol=1e-4, rtol=1e-4)  # images, grids, flows and matrices
POINT_TOL = dict(atol=1e-3)  # pixels

# Output names (after the '<padding_mode>/' prefix) -> what they hold. Groups: `iters` / `res`
# select the forward call, `batch` the images it runs on.
_PATTERNS = [
    (
        r"(?:it(?P<iters>\d+)_)?(?:(?P<policy>unfold|assign)_)?"
        r"(?P<field>img|grid|flow|sim|sim_matrix|sim_grid)",
        "forward",
    ),
    (r"(?P<field>img|grid)_res(?P<res>\d+)", "forward"),
    (r"flip_(?P<field>img|warp|flow|inputs|indices)", "flip"),
    (r"congeal_points(?:_it(?P<iters>\d+))?", "congeal"),
    (r"uncongeal_points(?:_res(?P<res>\d+))?", "uncongeal"),
    (r"transfer_points(?:_it(?P<iters>\d+))?", "transfer"),
    (r"alpha_(?P<field>img|grid)", "alpha"),
]
_FIELDS = {
    "img": "image",
    "grid": "grid",
    "flow": "flow",
    "sim": "similarity_image",
    "sim_matrix": "matrix",
    "sim_grid": "similarity_grid",
}
_IMAGE_KEYS = re.compile(r"(img|sim|inputs)(_res\d+)?$")


def _parse(name, num_heads):
    """-> (kind, field, iters, res, policy). policy: None (every image by every head), "unfold"
    (the same rows as (N, K, ...)) or "assign" (each image by the argmax head of
    in/assign_logits). A clustering STN iterates only under an assignment (the reference raises
    otherwise), so its it<n>_ outputs are assigned ones."""
    for pattern, kind in _PATTERNS:
        if m := re.fullmatch(pattern, name):
            groups = m.groupdict()
            iters = int(groups.get("iters") or 1)
            res = int(groups["res"]) if groups.get("res") else None
            policy = groups.get("policy")
            if policy is None and iters > 1 and num_heads > 1:
                policy = "assign"
            return kind, groups.get("field"), iters, res, policy
    raise AssertionError(f"no rule computes the output '{name}'")


def _batches(kind):
    """Image sets a request needs: the forward call runs on their concatenation."""
    return {
        "forward": ("img",),
        "flip": ("img", "mirror"),
        "congeal": ("img",),
        "uncongeal": ("img",),
        "transfer": ("img", "imgB"),
        "alpha": ("alpha",),
    }[kind]


def _stn_outputs(fx, stn, variables) -> dict:
    """Every `out/` key of an STN fixture, in one jitted program with one forward per
    (padding mode, iters, output resolution) and all image sets batched into it."""
    size = fx.inputs["img"].shape[-1]
    num_heads = stn.config.num_heads
    requests = {}
    for key in fx.outputs:
        mode, name = key.split("/", 1)
        kind, field, iters, res, policy = _parse(name, num_heads)
        requests[key] = (mode, kind, field, iters, res, policy)
    calls = {}  # (mode, iters, res, assigned) -> image sets
    for mode, kind, _, iters, res, policy in requests.values():
        sets = calls.setdefault((mode, iters, res, policy == "assign"), [])
        sets.extend(s for s in _batches(kind) if s not in sets)

    def compute(variables, arrays):
        n = arrays["img"].shape[0]
        image_sets = {
            "img": arrays["img"],
            "imgB": arrays["imgB"],
            "mirror": mirror(arrays["img"]),
            "alpha": arrays["img"],
        }
        runs = {}
        for (mode, iters, res, assigned), sets in calls.items():
            batch = jnp.concatenate([image_sets[s] for s in sets])
            heads = None
            if assigned:
                heads = jnp.concatenate([arrays["assign_logits"]] * len(sets))
            rows = n if assigned else n * num_heads  # output rows per image set
            alpha = None
            if "alpha" in sets:
                # alpha = 1 reproduces the un-lerped warp exactly (torch.lerp's w >= 0.5 branch),
                # so one call serves the alpha rows and the plain rows.
                alpha = jnp.concatenate(
                    [arrays["alpha"] if s == "alpha" else jnp.ones((n,)) for s in sets]
                )
            out = stn.apply(
                variables,
                batch,
                output_resolution=res,
                iters=iters,
                alpha=alpha,
                padding_mode=mode,
                heads=heads,
            )
            for i, s in enumerate(sets):
                runs[(mode, iters, res, assigned, s)] = jax.tree_util.tree_map(
                    lambda x, i=i, rows=rows: x[i * rows : (i + 1) * rows], out
                )
        result = {}
        for key, (mode, kind, field, iters, res, policy) in requests.items():

            def run(image_set, call=(mode, iters, res, policy == "assign")):
                return runs[(*call, image_set)]

            if kind in ("forward", "alpha"):
                out = run("alpha" if kind == "alpha" else "img")
                if policy == "unfold":
                    out = unfold_heads(out, num_heads)
                result[key] = getattr(out, _FIELDS[field])
            elif kind == "flip":
                flip = choose_flips(run("img"), run("mirror"), arrays["img"])
                result[key] = {
                    "img": flip.image,
                    "warp": flip.grid,
                    "flow": flip.flow,
                    "inputs": flip.inputs,
                    "indices": flip.flipped,
                }[field]
            elif kind == "congeal":
                result[key] = congealed_points_from_output(run("img"), arrays["points"], size)
            elif kind == "uncongeal":
                result[key] = source_points_from_output(
                    run("img"), arrays["points_congealed_norm"], size, input_size=size
                )
            else:
                result[key] = transfer_points_from_outputs(
                    run("img"), run("imgB"), arrays["points"], size, size
                )
        return result

    arrays = {k: jnp.asarray(nchw_to_nhwc(v) if v.ndim == 4 else v) for k, v in fx.inputs.items()}
    return jax.tree_util.tree_map(np.asarray, jax.jit(compute)(variables, arrays))


def _check_config(config, meta):
    assert config.transforms == tuple(meta["transforms"])
    assert (config.flow_size, config.supersize) == (meta["flow_size"], meta["supersize"])
    assert config.num_heads == meta["num_heads"]
    assert config.flow_downsample == meta["flow_downsample"]
    assert config.blur_kernel == tuple(meta["blur_kernel"])
    assert config.max_mipmap_levels == meta["mipmap_max_num_levels"]
    for res, channels in config.channel_table.items():
        assert channels == int(meta["channels"][str(res)]), f"channels at resolution {res}"


@pytest.mark.parametrize("path", golden_cases("stn"))
def test_stn_golden(path):
    fx = load_fixture(path)
    config, variables = stn_variables_from_state(fx.state, str(path))
    _check_config(config, fx.meta)
    actual = _stn_outputs(fx, STN(config), variables)
    assert set(actual) == set(fx.outputs)
    for key, expected in sorted(fx.outputs.items()):
        got = actual[key]
        if expected.dtype == bool:
            np.testing.assert_array_equal(got.reshape(expected.shape), expected, err_msg=key)
        elif np.issubdtype(expected.dtype, np.integer):
            np.testing.assert_array_equal(got.astype(expected.dtype), expected, err_msg=key)
        elif "points" in key:
            assert_close(got, expected, name=key, **POINT_TOL)
        else:
            if _IMAGE_KEYS.search(key):
                # NCHW, or (N, K, C, H, W) unfolded per head
                expected = np.moveaxis(expected, -3, -1)
            assert_close(got, expected, name=key, **IMAGE_TOL)


def _assert_same_variables(actual, expected):
    leaves = jax.tree_util.tree_leaves_with_path(actual)
    assert len(leaves) == len(jax.tree_util.tree_leaves(expected))
    for key_path, leaf in leaves:
        other = expected
        for k in key_path:
            other = other[k.key]
        np.testing.assert_array_equal(leaf, other, err_msg=jax.tree_util.keystr(key_path))


@pytest.mark.parametrize("path", golden_cases("stn", ".pt"))
def test_stn_checkpoint_matches_fixture_state(path, tmp_path):
    config, variables = load_stn(path)
    npz = path.with_suffix(".npz")
    expected_config, expected = stn_variables_from_state(load_fixture(npz).state, str(npz))
    assert config == expected_config
    _assert_same_variables(variables, expected)
    # Converted bundle directory -> the same config and weights.
    convert_checkpoint(path, tmp_path, modules=["t_ema"])
    bundle_config, bundle_variables = load_stn(tmp_path)
    assert bundle_config == config
    _assert_same_variables(bundle_variables, expected)


def test_stn_converter_errors():
    fx = load_fixture(golden_cases("stn")[0].values[0])
    state = dict(fx.state)
    key = next(k for k in state if k.endswith("final_conv.0.weight"))
    del state[key]
    with pytest.raises(CheckpointError, match=re.escape(f"missing key '{key}'")):
        stn_variables_from_state(state, "x.pt")
    state = dict(fx.state)
    key = next(k for k in state if k.endswith("warp_head.mask_out.0.weight"))
    state[key] = state[key][:, :-1]
    with pytest.raises(CheckpointError, match=re.escape(key)):
        stn_variables_from_state(state, "x.pt")
    state = dict(fx.state, **{"stns.0.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="unexpected STN keys"):
        stn_variables_from_state(state, "x.pt")
    state = dict(fx.state)
    key = next(k for k in state if k.endswith("warper.blur_filter"))
    state[key] = state[key] * 2
    with pytest.raises(CheckpointError, match="differs"):
        stn_variables_from_state(state, "x.pt")
    flow_only = {k[len("stns.1.") :]: v for k, v in fx.state.items() if k.startswith("stns.1.")}
    if flow_only and "warp_head.flow_out.2.weight" in flow_only:
        with pytest.raises(CheckpointError, match="flow_size"):
            stn_variables_from_state(flow_only, "x.pt")
        config, _ = stn_variables_from_state(flow_only, "x.pt", flow_size=fx.meta["flow_size"])
        assert config.transforms == ("flow",)
