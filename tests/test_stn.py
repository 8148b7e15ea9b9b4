"""Golden parity of the spatial transformer (forward, iterations, output resolution, alpha, flips,
keypoints), its checkpoint converter, and properties of small randomly initialised STNs."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.apps.points import (
    choose_flips,
    congeal_points,
    congealed_points_from_output,
    forward_with_flip,
    match_flips,
    mirror,
    similarity_scale,
    source_points_from_output,
    transfer_points,
    transfer_points_from_outputs,
    uncongeal_points,
    warp_exceeds_bounds,
)
from gangealing_jax.convert.convert_checkpoint import convert_checkpoint
from gangealing_jax.convert.state_dict import CheckpointError
from gangealing_jax.convert.stn import load_stn, stn_variables_from_state
from gangealing_jax.models.stn import STN, STNConfig, select_heads, unfold_heads
from gangealing_jax.ops.sampling import identity_grid
from tests.golden import assert_close, golden_cases, load_fixture, nchw_to_nhwc
from tests.tiny_models import perturbed

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


# --- small random STNs ----------------------------------------------------------------------

_TINY_CHANNELS = {1: 8, 2: 8, 4: 8, 8: 8, 16: 8}


def _tiny(
    transforms=("similarity", "flow"),
    num_heads=1,
    supersize=16,
    scale=0.0,
    seed=0,
    antialias=True,
    input_mask="none",
):
    # antialias=False (plain bilinear sampling) halves compile time where sampling is not tested.
    config = STNConfig(
        transforms=transforms,
        flow_size=16,
        supersize=supersize,
        channels=_TINY_CHANNELS,
        num_heads=num_heads,
        antialias=antialias,
        input_mask=input_mask,
    )
    stn = STN(config)
    key, perturb_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = jax.jit(stn.init)(key, jnp.zeros((1, supersize, supersize, 3)))
    if scale:
        variables = perturbed(variables, perturb_key, scale)
    return stn, variables


def _images(n, size, seed=1):
    coarse = jax.random.uniform(jax.random.PRNGKey(seed), (n, 4, 4, 3), minval=-1, maxval=1)
    return jax.image.resize(coarse, (n, size, size, 3), "linear")


def test_fresh_stn_is_identity_and_jits_once():
    stn, variables = _tiny()
    traces = []

    @jax.jit
    def forward(variables, images, alpha):
        traces.append(1)
        return stn.apply(variables, images, alpha=alpha, padding_mode="reflection")

    images = _images(2, 16)
    out = forward(variables, images, jnp.array([0.3, 0.9]))
    forward(variables, _images(2, 16, seed=5), jnp.array([0.5, 0.1]))
    assert len(traces) == 1
    identity = identity_grid(16, 16)
    np.testing.assert_array_equal(out.flow, 0.0)
    np.testing.assert_allclose(out.matrix, jnp.broadcast_to(jnp.eye(2, 3), (2, 2, 3)), atol=1e-7)
    np.testing.assert_allclose(out.grid, jnp.broadcast_to(identity, out.grid.shape), atol=1e-6)
    np.testing.assert_allclose(out.similarity_grid, out.grid, atol=1e-6)
    np.testing.assert_allclose(out.image, images, atol=1e-5)


def test_heads_cartesian_and_assigned_agree():
    stn, variables = _tiny(num_heads=2, supersize=32, scale=0.05, antialias=False)
    heads = jnp.array([1, 0, 1])
    # Scores over 2K columns (the second K = mirrored) pick head argmax % K.
    scores = jax.nn.one_hot(jnp.array([3, 0, 1]), 4)
    np.testing.assert_array_equal(select_heads(scores, 2), heads)

    @jax.jit
    def run(variables, images):
        apply = functools.partial(stn.apply, variables, images, padding_mode="border")
        return apply(), apply(heads=heads), apply(iters=2)

    every, one, iterated = run(variables, _images(3, 32))
    assert every.image.shape == (6, 16, 16, 3) and every.flow.shape == (6, 16, 16, 2)
    rows = np.arange(3) * 2 + np.asarray(heads)
    for field in ("image", "grid", "flow", "matrix", "similarity_image"):
        np.testing.assert_allclose(getattr(one, field), getattr(every, field)[rows], atol=1e-6)
    assert iterated.image.shape == (6, 16, 16, 3)
    assert not np.allclose(iterated.matrix, every.matrix, atol=1e-4)
    # unfold: the same rows viewed per image and head, (N, K, ...).
    unfolded = unfold_heads(every, 2)
    assert unfolded.image.shape == (3, 2, 16, 16, 3) and unfolded.matrix.shape == (3, 2, 2, 3)
    np.testing.assert_array_equal(unfolded.flow[np.arange(3), heads], every.flow[rows])
    with pytest.raises(ValueError, match="heads"):
        unfold_heads(one, 2)


def test_points_round_trip_within_a_pixel():
    stn, variables = _tiny(scale=0.02, seed=3, antialias=False)
    stn_sim, variables_sim = _tiny(("similarity",), scale=0.05, seed=7, antialias=False)
    points = jnp.array(
        [[[4.0, 5.0], [8.5, 10.0], [11.0, 3.0]], [[6.0, 6.0], [9.0, 12.0], [3.0, 8.0]]]
    )

    @jax.jit
    def run(variables, variables_sim, images):
        # Similarity + flow: the nearest-neighbour inversion is exact to the flow grid cell.
        back = transfer_points(stn, variables, images, images, points, padding_mode="border")
        # Similarity only: the closed-form inverse round-trips exactly.
        congealed = congeal_points(
            stn_sim, variables_sim, images, points, unnormalize_output_points=True
        )
        back_sim = uncongeal_points(
            stn_sim, variables_sim, images, congealed, normalize_input_points=True
        )
        scale = similarity_scale(stn_sim.apply(variables_sim, images).matrix)
        return back, congealed, back_sim, scale

    back, congealed, back_sim, scale = run(variables, variables_sim, _images(2, 16, seed=4))
    assert float(jnp.max(jnp.linalg.norm(back - points, axis=-1))) < 1.0
    assert not np.allclose(congealed, points, atol=0.1)
    np.testing.assert_allclose(back_sim, points, atol=1e-3)
    assert np.all(np.asarray(scale) > 0)


def test_flip_inference_on_mirrored_pair():
    stn, variables = _tiny(scale=0.05, seed=11, antialias=False)
    points = jnp.array([[[2.0, 3.0], [10.0, 4.0]]])

    @jax.jit
    def run(variables, a):
        flips = forward_with_flip(stn, variables, jnp.concatenate([a, mirror(a)]))
        return flips, match_flips(stn, variables, a, mirror(a), points, points)

    out, match = run(variables, _images(1, 16, seed=12))
    assert bool(out.flipped[0]) != bool(out.flipped[1])
    np.testing.assert_allclose(out.image[0], out.image[1], atol=1e-5)
    np.testing.assert_allclose(out.inputs[0], out.inputs[1], atol=0)
    np.testing.assert_allclose(out.grid[0, ..., 0], -out.grid[1, ..., 0], atol=1e-6)
    assert int(match.pick[0]) in (1, 2)
    np.testing.assert_array_equal(match.images_a, match.images_b)
    flipped = match.points_a if int(match.pick[0]) == 1 else match.points_b
    np.testing.assert_allclose(flipped[0, :, 0], 15.0 - points[0, :, 0])


def test_out_of_bounds_check():
    identity = jnp.broadcast_to(identity_grid(16, 16), (2, 16, 16, 2))
    np.testing.assert_array_equal(warp_exceeds_bounds(identity), [False, False])
    np.testing.assert_array_equal(warp_exceeds_bounds(identity * 1.5), [True, True])
    # A landscape image padded to a square: rows outside its height count as out of bounds.
    bounds = jnp.array([[50.0, 100.0], [100.0, 100.0]])
    np.testing.assert_array_equal(warp_exceeds_bounds(identity, bounds), [True, False])


def test_disk_input_mask_hides_the_corners():
    """With input_mask="disk" the regressed warp ignores what lies outside the inscribed disk."""
    images = _images(2, 16)
    radius = jnp.linalg.norm(identity_grid(16, 16), axis=-1)
    corners = jnp.where((radius > 1.0)[None, :, :, None], 1.0 - images, images)
    for mask, same in (("disk", True), ("none", False)):
        stn, variables = _tiny(("similarity",), scale=0.05, antialias=False, input_mask=mask)
        forward = jax.jit(lambda x, stn=stn, v=variables: stn.apply(v, x).matrix)
        a, b = forward(images), forward(corners)
        if same:
            np.testing.assert_allclose(a, b, atol=1e-6)
        else:
            assert not np.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="input_mask"):
        STNConfig(input_mask="circle")


def test_config_and_call_errors():
    with pytest.raises(ValueError, match="last stage"):
        STNConfig(transforms=("flow", "similarity"))
    with pytest.raises(ValueError, match="multiple of flow_size"):
        STNConfig(flow_size=32, supersize=48)
    with pytest.raises(ValueError, match="no entry for resolution 2"):
        STN(STNConfig(transforms=("flow",), flow_size=32, supersize=32)).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))
        )
    stn, variables = _tiny(("flow",))
    with pytest.raises(ValueError, match="iters"):
        stn.apply(variables, jnp.zeros((1, 16, 16, 3)), iters=2)
    with pytest.raises(ValueError, match="padding_mode"):
        stn.apply(variables, jnp.zeros((1, 16, 16, 3)), padding_mode="wrap")
