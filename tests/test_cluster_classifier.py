"""The cluster classifier: shapes, head/flip semantics, reference-layout conversion, initialisation
from the STN, training on the frozen STN's labels (sharded == single device), and the CLI."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags

from configs import test as test_config
from gangealing_jax import train_cluster_classifier
from gangealing_jax.convert.cluster_classifier import (
    classifier_variables_from_state,
    init_from_stn,
    load_classifier,
)
from gangealing_jax.convert.state_dict import CheckpointError
from gangealing_jax.losses.gangealing import Frozen, ObjectiveSettings, draw_noise
from gangealing_jax.losses.perceptual import multiscale_structural_distance
from gangealing_jax.models.cluster_classifier import (
    ClassifierConfig,
    ClusterClassifier,
    assign,
    classifier_config_for_stn,
    flip_decisions,
    mirror_where,
)
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stylegan2 import Generator, GeneratorConfig
from gangealing_jax.ops.precision import Policy
from gangealing_jax.training.checkpoints import CheckpointManager
from gangealing_jax.training.cluster_classifier import (
    ClassifierStepSettings,
    Teacher,
    classifier_gradients,
    init_state,
    label_fake_images,
    load_trained_run,
    make_optimizer,
    make_train_step,
)
from gangealing_jax.training.gangealing_loop import export_model
from gangealing_jax.training.gangealing_setup import build_run
from gangealing_jax.training.parallel import make_mesh
from tests.tiny_models import tiny_stn_config

DISTANCE = jax.tree_util.Partial(multiscale_structural_distance)
CHANNELS = tuple((2**i, 2 + i) for i in range(2, 5))  # a different width at every resolution


def _classifier(size=16, supersize=32, num_heads=3, flips=True):
    config = ClassifierConfig(size, supersize, CHANNELS, num_heads=num_heads, flips=flips)
    model = ClusterClassifier(config)
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, size, size, 3)))
    # Non-zero biases, so that a bias mapped to the wrong tensor shows.
    variables = jax.tree.map(
        lambda x: x + 0.1 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size, variables
    )
    return model, variables


def test_shapes_and_input_downsampling():
    model, variables = _classifier()
    images = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 32, 3))
    apply = jax.jit(model.apply)
    logits = apply(variables, images)
    assert logits.shape == (2, 6) and model.config.num_classes == 6
    # A supersize input is shrunk by the tent filter first; a 16x16 copy of it gives the same logits.
    from gangealing_jax.ops.mipmap import bilinear_downsample

    small = apply(variables, bilinear_downsample(images, 2))
    np.testing.assert_allclose(logits, small, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 16"):
        model.apply(variables, jnp.zeros((1, 24, 24, 3)))
    stn_config = tiny_stn_config(flow_size=16, supersize=32, num_heads=4)
    config = classifier_config_for_stn(stn_config, flips=False)
    assert (config.size, config.supersize, config.num_classes) == (16, 32, 4)
    assert config.channels == stn_config.channels


def test_assign_and_flip_semantics():
    # K = 2 heads with flips: columns (head 0, head 1, head 0 mirrored, head 1 mirrored).
    logits = jnp.array(
        [
            [5.0, 1.0, 0.0, 0.0],  # class 0: head 0 as is
            [0.0, 5.0, 0.0, 0.0],  # class 1: head 1 as is
            [0.0, 1.0, 5.0, 0.0],  # class 2: head 0 mirrored
            [3.0, 0.0, 1.0, 5.0],  # class 3: head 1 mirrored
        ]
    )
    choice = assign(logits, 2)
    np.testing.assert_array_equal(choice.head, [0, 1, 0, 1])
    np.testing.assert_array_equal(choice.flip, [False, False, True, True])
    np.testing.assert_array_equal(assign(logits, 2, ignore_flips=True).flip, [False] * 4)
    np.testing.assert_array_equal(assign(logits, 2, ignore_flips=True).head, [0, 1, 0, 1])
    # Without flip columns, K classes are heads.
    no_flips = assign(logits[:, :2], 2)
    np.testing.assert_array_equal(no_flips.head, [0, 1, 1, 0])
    assert not np.any(no_flips.flip)
    # Per-head decisions compare column k with column K + k.
    per_head = flip_decisions(logits, 2)
    np.testing.assert_array_equal(per_head.head, [[0, 1]] * 4)
    np.testing.assert_array_equal(
        per_head.flip, [[False, False], [False, False], [True, False], [False, True]]
    )
    assert not np.any(flip_decisions(jnp.zeros((1, 4)), 2).flip)  # ties keep the image as is
    with pytest.raises(ValueError, match=r"\(N, 2\) or \(N, 4\)"):
        assign(logits[:, :3], 2)
    with pytest.raises(ValueError, match="trained with flips"):
        flip_decisions(logits[:, :2], 2)
    images = jnp.arange(2 * 2 * 3 * 1, dtype=jnp.float32).reshape(2, 2, 3, 1)
    mirrored = mirror_where(images, jnp.array([False, True]))
    np.testing.assert_array_equal(mirrored[0], images[0])
    np.testing.assert_array_equal(mirrored[1], images[1, :, ::-1])


def _torch_state(variables, config):
    """The reference's state dict layout, written out independently of the converter."""
    p = jax.tree.map(np.asarray, variables["params"])
    conv = lambda w: w.transpose(3, 2, 0, 1)  # noqa: E731  (kh, kw, in, out) -> (out, in, kh, kw)
    state = {"convs.0.0.weight": conv(p["convs_0"]["conv"]["weight"])}
    state["convs.0.1.bias"] = p["convs_0"]["act"]["bias"]
    fir = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64
    j = 1
    while f"convs_{j}" in p:
        block = p[f"convs_{j}"]
        state[f"convs.{j}.conv1.0.weight"] = conv(block["conv1"]["conv"]["weight"])
        state[f"convs.{j}.conv1.1.bias"] = block["conv1"]["act"]["bias"]
        state[f"convs.{j}.conv2.0.kernel"] = fir
        state[f"convs.{j}.conv2.1.weight"] = conv(block["conv2"]["conv"]["weight"])
        state[f"convs.{j}.conv2.2.bias"] = block["conv2"]["act"]["bias"]
        state[f"convs.{j}.skip.0.kernel"] = fir
        state[f"convs.{j}.skip.1.weight"] = conv(block["skip"]["conv"]["weight"])
        j += 1
    state["final_conv.0.weight"] = conv(p["final_conv"]["conv"]["weight"])
    state["final_conv.1.bias"] = p["final_conv"]["act"]["bias"]
    w = p["to_logits"]["weight"]  # (4*4*C, out), rows in (h, w, c) order
    channels = w.shape[0] // 16
    state["to_logits.weight"] = (
        w.reshape(4, 4, channels, -1).transpose(3, 2, 0, 1).reshape(-1, 16 * channels)
    )
    state["to_logits.bias"] = p["to_logits"]["bias"]
    factor = config.supersize // config.size
    tent = np.array([1.0, 3.0, 3.0, 1.0], np.float32) / 8  # BilinearDownsample(2)
    assert factor == 2
    state["input_downsample.kernel_horz"] = np.tile(tent[None, None, None, :], (3, 1, 1, 1))
    state["input_downsample.kernel_vert"] = np.tile(tent[None, None, :, None], (3, 1, 1, 1))
    return state


def test_reference_layout_conversion_round_trip():
    model, variables = _classifier()
    state = _torch_state(variables, model.config)
    # torch flattens (C, 4, 4) features: the converted weight must give torch's F.linear result.
    features = np.random.default_rng(0).normal(size=(2, 4, 4, CHANNELS[0][1]))  # float64
    torch_out = features.transpose(0, 3, 1, 2).reshape(2, -1) @ state["to_logits.weight"].T
    config, converted = classifier_variables_from_state(state, "x.pt", num_heads=3)
    assert config == model.config
    np.testing.assert_allclose(
        features.reshape(2, -1) @ converted["params"]["to_logits"]["weight"], torch_out, rtol=1e-12
    )
    jax.tree.map(np.testing.assert_array_equal, converted, jax.device_get(variables))
    # 6 classes read as 6 heads without flips; other head counts are errors.
    assert not classifier_variables_from_state(state, num_heads=6)[0].flips
    with pytest.raises(CheckpointError, match="neither num_heads=4"):
        classifier_variables_from_state(state, "x.pt", num_heads=4)
    with pytest.raises(CheckpointError, match="pass num_heads"):
        classifier_variables_from_state(state, "x.pt")
    broken = {k: v for k, v in state.items() if k != "final_conv.1.bias"}
    with pytest.raises(CheckpointError, match="missing key 'final_conv.1.bias'"):
        classifier_variables_from_state(broken, "x.pt", num_heads=3)
    bad_kernel = dict(
        state, **{"input_downsample.kernel_horz": state["input_downsample.kernel_horz"] * 2}
    )
    with pytest.raises(CheckpointError, match="buffer 'input_downsample.kernel_horz'"):
        classifier_variables_from_state(bad_kernel, "x.pt", num_heads=3)
    extra = dict(state, **{"warp_head.linear.weight": np.zeros((4, 4), np.float32)})
    with pytest.raises(CheckpointError, match="unexpected classifier keys"):
        classifier_variables_from_state(extra, "x.pt", num_heads=3)


def test_init_from_stn_copies_the_similarity_trunk():
    stn_config = tiny_stn_config(flow_size=16, supersize=16, num_heads=2)
    stn_vars = jax.jit(STN(stn_config).init)(jax.random.PRNGKey(5), jnp.zeros((1, 16, 16, 3)))
    model = ClusterClassifier(classifier_config_for_stn(stn_config, flips=True))
    fresh = jax.jit(model.init)(jax.random.PRNGKey(6), jnp.zeros((1, 16, 16, 3)))
    started = init_from_stn(fresh, stn_vars, stn_config)
    trunk = stn_vars["params"]["stns_0"]
    for name in ("convs_0", "convs_1", "convs_2", "final_conv"):
        jax.tree.map(np.testing.assert_array_equal, started["params"][name], trunk[name])
    np.testing.assert_array_equal(
        started["params"]["to_logits"]["weight"], fresh["params"]["to_logits"]["weight"]
    )
    assert not np.array_equal(fresh["params"]["convs_0"]["conv"]["weight"],
                              started["params"]["convs_0"]["conv"]["weight"])  # fmt: skip
    wide = ClusterClassifier(ClassifierConfig(16, 16, CHANNELS, num_heads=2, flips=True))
    with pytest.raises(ValueError, match="differ in shape"):
        wide_vars = jax.eval_shape(wide.init, jax.random.PRNGKey(6), jnp.zeros((1, 16, 16, 3)))
        init_from_stn(wide_vars, stn_vars, stn_config)


@functools.cache
def _teacher():
    """A random 2-head teacher. Its STN has only the similarity stage, which is all that labelling
    needs (the congealed images), and compiles much faster than a flow stage."""
    gconfig = GeneratorConfig(size=16, style_dim=16, n_mlp=2, channels=(8, 8, 8))
    generator = Generator(gconfig)
    gvars = jax.jit(functools.partial(generator.init, noise_mode="const"))(
        jax.random.PRNGKey(0), jnp.zeros((1, 16))
    )
    stn_config = tiny_stn_config(flow_size=16, supersize=16, num_heads=2)
    stn = STN(dataclasses.replace(stn_config, transforms=("similarity",)))
    stn_vars = jax.jit(stn.init)(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))
    d = generator.config.style_dim
    frozen = Frozen(gvars, jnp.eye(2, d), jnp.zeros((1, d)))
    teacher = Teacher(frozen, stn_vars, jnp.array([[1.5, -1.0], [-1.5, 1.0]]))
    settings = ClassifierStepSettings(ObjectiveSettings(inject=3, flips=True), batch=16, period=2.0)
    model = ClusterClassifier(classifier_config_for_stn(stn.config, flips=True))
    fresh = jax.jit(model.init)(jax.random.PRNGKey(4), jnp.zeros((1, 16, 16, 3)))
    params = init_from_stn(fresh, stn_vars, stn.config)
    return generator, stn, model, teacher, settings, params


def test_labels_and_training_reduce_cross_entropy_on_a_fixed_batch():
    generator, stn, model, teacher, settings, params = _teacher()
    z = jax.random.normal(jax.random.PRNGKey(8), (8, generator.config.style_dim))
    noise = draw_noise(generator, jax.random.PRNGKey(9), 8, heads=2)
    batch = jax.jit(
        lambda t, z, n: label_fake_images(
            t, z, n, DISTANCE, generator=generator, stn=stn, settings=settings.objective
        )  # fmt: skip
    )(teacher, z, noise)
    assert batch.images.shape == (8, 16, 16, 3) and batch.distances.shape == (8, 4)
    np.testing.assert_array_equal(batch.labels, np.argmin(batch.distances, axis=1))
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, opt_state):
        grads, metrics = classifier_gradients(params, batch, classifier=model)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    history = []
    for _ in range(8):
        params, opt_state, metrics = update(params, opt_state)
        history.append(float(metrics["cross_entropy"]))
    assert all(b < a for a, b in zip(history, history[1:], strict=False)), history
    assert history[-1] < 0.8 * history[0], history
    assert float(metrics["acc1"]) <= float(metrics["acc2"]) <= 1.0
    shares = [float(metrics[f"head_{j}"]) for j in range(4)]
    assert sum(shares) == pytest.approx(1.0)
    assert shares == pytest.approx(np.bincount(batch.labels, minlength=4) / 8)


def test_sharded_step_equals_single_device():
    assert len(jax.devices()) == 8, "conftest must provide 8 CPU devices"
    generator, stn, model, teacher, settings, params = _teacher()
    optimizer = make_optimizer(settings)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):  # 16 images: 2 per device on 8 devices
        step = make_train_step(generator, stn, model, optimizer, settings, make_mesh(devices))
        state = init_state(params, optimizer, jax.random.PRNGKey(7))
        history = []
        for _ in range(2):
            state, metrics = step(state, teacher, DISTANCE)
            history.append(jax.device_get(metrics))
        results.append((jax.device_get(state.params), history))
    (single, hist_single), (sharded, hist_sharded) = results
    assert hist_single[1]["lr"] < hist_single[0]["lr"] == pytest.approx(1e-3)  # cosine from step 1
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
    jax.tree.map(close, single, sharded)
    jax.tree.map(close, hist_single, hist_sharded)


def _tiny_two_head_run(run_dir):
    """A 2-head run with flips as `train` exports it. The congealing init is given (the cache file
    a resumed run reads) instead of computed, which would take most of the test's time."""
    config = test_config.get_config()
    config.num_heads, config.flips = 2, True
    config.stn.transforms = ("similarity",)  # compiles in half the time of similarity + flow
    run_dir.mkdir(parents=True)
    d = config.generator.random_style_dim
    np.savez(
        run_dir / "congealing_init.npz", directions=np.eye(config.ndirs, d, dtype=np.float32),
        lat_mean=np.zeros((1, d), np.float32), coefficients=np.array([[2.0, 0], [-2.0, 0]], np.float32),
    )  # fmt: skip
    setup, state = build_run(
        config, jax.random.PRNGKey(config.seed), run_dir / "congealing_init.npz"
    )
    (run_dir / "config.json").write_text(config.to_json_best_effort(indent=2))
    export_model(run_dir / "model", config, setup, state)
    return setup, state


def _cli(*args):
    flags.FLAGS.unparse_flags()
    argv = flags.FLAGS(["train_cluster_classifier", *args])
    try:
        train_cluster_classifier.main(argv)
    finally:
        flags.FLAGS.unparse_flags()


def test_cli_trains_resumes_and_exports(tmp_path, capsys):
    setup, state = _tiny_two_head_run(tmp_path / "run")
    # The classifier is trained against the very generator the run used.
    run = load_trained_run(tmp_path / "run")
    jax.tree.map(
        np.testing.assert_array_equal, run.teacher.frozen.generator, setup.frozen.generator
    )
    # ... and with the numerics of the run's compute section (here the float32 default).
    assert run.policy == setup.stn.policy == Policy(matmul_precision="auto")
    assert run.stn.policy == run.generator.policy == run.policy
    common = [f"--model={tmp_path / 'run'}", f"--workdir={tmp_path / 'cls'}", "--batch=4",
              "--num_devices=1", "--period=2", "--log_every=1", "--ckpt_every=2"]  # fmt: skip
    _cli(*common, "--iters=2")
    _cli(*common, "--iters=3")  # resumes from the checkpoint of iteration 2
    assert "finished at iteration 3" in capsys.readouterr().out
    records = [json.loads(line) for line in open(tmp_path / "cls" / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["cross_entropy"]) for r in records)
    with CheckpointManager(tmp_path / "cls" / "checkpoints", save_every=2) as ckpts:
        assert ckpts.all_steps() == [2, 3]
    config, variables = load_classifier(tmp_path / "cls")
    assert (config.num_heads, config.flips, config.size) == (2, True, 16)
    # The exported classifier runs on real-size images and started from the run's STN trunk.
    logits = ClusterClassifier(config).apply(variables, jnp.zeros((2, 16, 16, 3)))
    assert logits.shape == (2, 4)
    assert variables["params"]["convs_0"]["conv"]["weight"].shape == (1, 1, 3, 8)
    with pytest.raises(SystemExit) as exit_:
        _cli(f"--model={tmp_path / 'cls'}", f"--workdir={tmp_path / 'other'}", "--iters=1")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "not a finished GANgealing work directory" in err
