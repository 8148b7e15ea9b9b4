"""Generator-guided discriminator regularisation (GGDR) and the weight-free GAN quality measure:
shapes, where the gradient goes, the unchanged plain step, sharding, exact resume, the measure's
zero and its growth, the command and its errors."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.gan import test as test_config
from gangealing_jax.apps import gan_quality as quality_app
from gangealing_jax.errors import ConfigError
from gangealing_jax.losses.ggdr import cosine_distance
from gangealing_jax.models.discriminator import Discriminator, DiscriminatorConfig
from gangealing_jax.models.stylegan2 import Generator, GeneratorConfig, broadcast_w
from gangealing_jax.training import gan, gan_iteration, gan_loop, gan_quality, parallel
from gangealing_jax.training.config_checks import check_gan_config


def _config(**overrides):
    c = test_config.get_config()
    for key, value in overrides.items():
        c[key] = value
    return c


def _leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _tiny_pair(decoder_resolution: int):
    """A 16 px generator and discriminator of different widths, the decoder aimed at G's map."""
    g = Generator(GeneratorConfig(size=16, style_dim=8, n_mlp=1, channels=(8, 6, 4)))
    channels = g.config.channels[decoder_resolution.bit_length() - 3]
    d = Discriminator(
        DiscriminatorConfig(
            size=16,
            channels=(5, 7, 3),
            decoder_resolution=decoder_resolution,
            decoder_channels=channels,
        )
    )
    return g, d


def test_decoder_predicts_a_map_shaped_as_the_generator_feature():
    # 16 of 16 px: two decoder stages, the second reading the previous one beside D's 8x8 map.
    resolution = 16
    g, d = _tiny_pair(resolution)
    plain = Discriminator(dataclasses.replace(d.config, decoder_resolution=0, decoder_channels=0))

    @jax.jit
    def run(key):
        g_key, w_key, d_key = jax.random.split(key, 3)
        g_vars = g.init(g_key, jnp.zeros((1, 8)), noise_mode="const")
        w = broadcast_w(jax.random.normal(w_key, (4, 8)), g.n_latent)
        made = g.apply(g_vars, w, noise_mode="const", method=Generator.synthesize_features)
        image = g.apply(g_vars, w, noise_mode="const", method=Generator.synthesize)
        d_params = d.init(d_key, image)["params"]
        plain_params = plain.init(d_key, image)["params"]
        out = d.apply({"params": d_params}, image, method=Discriminator.forward)
        plain_logit = plain.apply({"params": plain_params}, image)
        return made, image, d_params, plain_params, out, plain_logit

    made, image, d_params, plain_params, out, plain_logit = run(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(made.image, image)  # the same pass, nothing changed
    assert [f.shape[1] for f in made.features] == [4, 8, 16]
    assert out.decoded.shape == made.feature_at(resolution).shape
    assert np.isfinite(np.asarray(out.decoded)).all()
    # The decoder adds parameters beside the plain discriminator's, which it leaves as they are.
    assert set(d_params) == set(plain_params) | {"decoder"}
    _leaves_equal({k: d_params[k] for k in plain_params}, plain_params)
    np.testing.assert_array_equal(out.logit, plain_logit)
    with pytest.raises(ValueError, match="no generator feature map at resolution 32"):
        made.feature_at(32)


def _setup(config, devices=None, **fields):
    setup = gan_loop.build_setup(config, parallel.make_mesh(devices))
    return dataclasses.replace(setup, **fields) if fields else setup


def _inputs(setup, real_u8, state):
    keys = gan.iteration_keys(state.rng, state.step)
    inputs = gan.draw_fake_inputs(setup, keys.d_fake, setup.batch)
    return inputs, gan.real_images(setup, real_u8, keys.real_flip)


def _plain_d_loss(d_params, g_params, g_buffers, inputs, real, *, setup):
    """D's loss as the trainer computed it before GGDR existed: image-only generator, logit-only
    discriminator."""
    fake = jax.lax.stop_gradient(gan.generate(setup, g_params, g_buffers, inputs))
    fake_pred = gan._discriminate(setup, d_params, fake)
    real_pred = gan._discriminate(setup, d_params, real)
    return jnp.mean(jax.nn.softplus(-real_pred)) + jnp.mean(jax.nn.softplus(fake_pred)), {}


@functools.lru_cache(maxsize=1)
def _d_gradients():
    """Gradients w.r.t. (D, G) of D's loss on one batch, for: GGDR on (weight 10), the same
    decoder weighted 0 ("idle"), no decoder ("plain") and the pre-GGDR formulation."""
    config = _config(ggdr_weight=10.0)
    on, idle, plain = _setup(config), _setup(config, ggdr_weight=0.0), _setup(_config())
    state = jax.device_get(gan_loop.init_replicated(on, jax.random.PRNGKey(4)))
    real = np.random.default_rng(0).integers(0, 256, (config.batch, 8, 8, 3), dtype=np.uint8)

    @jax.jit
    def grads(state, real_u8):
        inputs, real = _inputs(on, real_u8, state)
        trunk = {k: v for k, v in state.d_params.items() if k != "decoder"}
        out = {}
        for name, loss, setup, d_params in (
            ("on", gan.d_loss, on, state.d_params),
            ("idle", gan.d_loss, idle, state.d_params),
            ("plain", gan.d_loss, plain, trunk),
            ("before", _plain_d_loss, plain, trunk),
        ):
            fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
            out[name] = fn(d_params, state.g_params, state.g_buffers, inputs, real, setup=setup)
        return out

    return jax.device_get(grads(state, real))


def test_ggdr_gradient_reaches_the_discriminator_and_decoder_not_the_generator():
    found = _d_gradients()
    (_, metrics), (d_on, g_on) = found["on"]
    (_, _), (d_idle, g_idle) = found["idle"]
    assert 0.0 < float(metrics["ggdr"]) <= 2.0
    for tree in (g_on, g_idle):  # the fakes and the target are labels: nothing flows into G
        assert all(not np.any(x) for x in jax.tree.leaves(tree))
    ggdr_grad = jax.tree.map(lambda a, b: a - b, d_on, d_idle)  # 10 x the GGDR term's gradient
    for name, sub in ggdr_grad.items():
        moved = any(np.any(x) for x in jax.tree.leaves(sub))
        # Every layer the decoder reads from gets a share of the GGDR gradient; the head after
        # the 4x4 features (stddev, final conv and linears) does not.
        assert moved == (name == "decoder" or name.startswith("convs_")), name


def test_weight_zero_is_the_plain_step():
    config = _config(ggdr_weight=0.0, ggdr_resolution=8)
    older = _config()
    for field in ("ggdr_weight", "ggdr_resolution"):
        del older[field]  # a config written before GGDR existed
    assert _setup(config) == _setup(older)
    assert _setup(config).discriminator.config.decoder_resolution == 0

    found = _d_gradients()
    (plain_loss, plain_metrics), plain_grads = found["plain"]
    (before_loss, _), before_grads = found["before"]
    # Without a decoder the loss and gradients are those of the trainer before GGDR, bit for bit.
    assert plain_loss == before_loss and "ggdr" not in plain_metrics
    _leaves_equal(plain_grads, before_grads)
    # A decoder weighted 0 gets no gradient and changes no other one.
    (idle_loss, _), (d_idle, g_idle) = found["idle"]
    assert idle_loss == plain_loss
    assert all(not np.any(x) for x in jax.tree.leaves(d_idle["decoder"]))
    _leaves_equal(({k: v for k, v in d_idle.items() if k != "decoder"}, g_idle), plain_grads)


def test_sharded_ggdr_d_steps_equal_single_device():
    # The discriminator's two steps, where the decoder trains (the G steps only carry its
    # parameters; the training runs below take them through all five on 8 devices).
    config = _config(ggdr_weight=10.0)
    state0 = jax.device_get(gan_loop.init_replicated(_setup(config), jax.random.PRNGKey(5)))
    real = np.random.default_rng(0).integers(0, 256, (config.batch, 8, 8, 3), dtype=np.uint8)
    finals = []
    for devices in (jax.devices()[:1], jax.devices()):
        setup = _setup(config, devices=devices)
        steps = gan_iteration.make_steps(setup, fast_compile=True)
        state = parallel.replicate(state0, setup.mesh)
        batch = parallel.shard_batch(real, setup.mesh)
        state, metrics = steps.d(state, batch)
        state, r1 = steps.d_r1(state, batch)
        finals.append((jax.device_get(state), jax.device_get({**metrics, **r1})))
    (single, m_single), (sharded, m_sharded) = finals
    assert len(jax.devices()) == 8 and "decoder" in single.d_params
    assert m_single["ggdr"] > 0
    for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
    for k in m_single:
        np.testing.assert_allclose(m_sharded[k], m_single[k], rtol=1e-5, atol=1e-6)


def _records(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_resume_with_ggdr_and_quality_is_exact(tmp_path_factory):
    config = _config(ggdr_weight=10.0, quality_every=2)
    straight_dir, resumed_dir = tmp_path_factory.mktemp("ggdr"), tmp_path_factory.mktemp("half")
    straight = gan_loop.train_gan(config, straight_dir)
    gan_loop.train_gan(_config(ggdr_weight=10.0, quality_every=2, steps=2), resumed_dir)
    resumed = gan_loop.train_gan(config, resumed_dir)
    assert resumed.step == straight.step == 4
    _leaves_equal(resumed.state, straight.state)
    records = _records(straight_dir)
    assert records == _records(resumed_dir)
    assert all(r["ggdr"] > 0 for r in records)
    assert [r["step"] for r in records if "quality_frechet" in r] == [1, 3]
    assert all(r["quality_frechet"] > 0 for r in records if "quality_frechet" in r)

    out = quality_app.measure(str(straight_dir / "generator.npz"), "procedural", samples=8)
    assert out["resolution"] == 8 and out["frechet"] > 0 and np.isfinite(out["kid"])


def test_quality_is_zero_for_identical_sets_and_grows_with_noise():
    u8 = quality_app.real_images("procedural", 48, 16, family="faces", seed=3, clutter=(1, 4))
    images = u8.astype(np.float32) / 127.5 - 1.0
    clean = gan_quality.image_features(images)
    same = gan_quality.scores(clean, clean)
    assert same.frechet == pytest.approx(0.0, abs=1e-9)
    noise = np.random.default_rng(0).standard_normal(images.shape).astype(np.float32)
    measured = [
        gan_quality.scores(clean, gan_quality.image_features(np.clip(images + s * noise, -1, 1)))
        for s in (0.1, 0.3, 0.6)
    ]
    assert same.frechet < measured[0].frechet < measured[1].frechet < measured[2].frechet
    assert same.kid < measured[0].kid < measured[1].kid < measured[2].kid
    # The unbiased estimate of identical sets is not exactly 0 (it leaves out the pairs of a
    # sample with itself), but it is small beside a visible change.
    assert abs(same.kid) < 0.05 * measured[-1].kid


def test_cosine_distance_is_zero_for_aligned_maps_and_one_for_orthogonal():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
    assert float(cosine_distance(3.0 * x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_distance(-x, x)) == pytest.approx(2.0, abs=1e-6)
    e0, e1 = jnp.zeros((1, 2, 2, 2)).at[..., 0].set(1), jnp.zeros((1, 2, 2, 2)).at[..., 1].set(1)
    assert float(cosine_distance(e0, e1)) == pytest.approx(1.0)
    assert float(cosine_distance(jnp.zeros_like(e0), e1)) == pytest.approx(1.0)  # no NaN


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"ggdr_weight": -1.0}, "ggdr_weight=-1.0: must be >= 0"),
        ({"ggdr_weight": 10.0, "ggdr_resolution": 4}, "ggdr_resolution=4: must be >= 8"),
        ({"ggdr_weight": 10.0, "ggdr_resolution": 16}, "ggdr_resolution=16: must be >= 8 and <= 8"),
        ({"quality_every": 3, "log_every": 2}, "quality_every=3: must be a multiple of log_every"),
    ],
)
def test_bad_ggdr_and_quality_fields_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        check_gan_config(_config(**fields))


def test_quality_command_prints_json_or_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        quality_app.main(["--generator", "embedded", "--data", str(tmp_path / "none")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --data {tmp_path / 'none'}: prepared dataset directory "
        f"{tmp_path / 'none'} does not exist"
    )
    with pytest.raises(SystemExit) as exit_:
        quality_app.main(["--generator", str(tmp_path / "g.npz"), "--data", "procedural"])
    assert exit_.value.code == 2 and "error: " in capsys.readouterr().err
