"""The numerics policy: both kernel paths agree (values, first- and second-order gradients), auto
resolves by backend, bad settings are refused, and bfloat16 stays close to float32 with float32
parameters, outputs and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs.default import get_config
from gangealing_jax.errors import ConfigError
from gangealing_jax.models.discriminator import Discriminator, DiscriminatorConfig
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stylegan2 import Generator
from gangealing_jax.ops import conv, upfirdn2d
from gangealing_jax.ops.precision import FLOAT32, Policy
from gangealing_jax.training.config_checks import check_gangealing_config
from gangealing_jax.training.gangealing_setup import compute_policy
from tests.golden import assert_close
from tests.tiny_models import tiny_generator, tiny_stn_config

CPU = Policy(kernels="cpu")
XLA = Policy(kernels="xla")
BF16 = Policy(dtype="bfloat16")


def _value_and_grads(fn, x, w):
    """f, d/d(x, w) of sum(f^3), and d/dw |d/dx sum(f^3)|^2 (the form of an R1 penalty)."""
    cube = lambda x, w: jnp.sum(fn(x, w) ** 3)  # noqa: E731
    first = jax.grad(cube, argnums=(0, 1))(x, w)
    second = jax.grad(lambda w: jnp.sum(jax.grad(cube)(x, w) ** 2))(w)
    return fn(x, w), first, second


def _assert_paths_agree(make, x, w):
    got = _value_and_grads(make(CPU), x, w)
    want = _value_and_grads(make(XLA), x, w)
    jax.tree.map(lambda a, b: assert_close(a, b, rtol=2e-5, atol=1e-5), got, want)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_conv2d_kernel_paths_agree(stride, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 3))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
    _assert_paths_agree(
        lambda p: lambda x, w: conv.conv2d(x, w, stride=stride, padding=padding, policy=p), x, w
    )


def test_transposed_conv_kernel_paths_agree():
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 5, 3))
    w = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 3, 4))
    _assert_paths_agree(lambda p: lambda x, w: conv.conv_transpose2d_stride2(x, w, policy=p), x, w)


@pytest.mark.parametrize("up,down", [(2, 1), (1, 2), (1, 1)])
def test_fir_kernel_paths_agree(up, down):
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 8, 8, 3))
    kernel = upfirdn2d.make_kernel((1, 3, 3, 1)) * up**2
    # The FIR has no weight: differentiate through a scale of it instead.
    _assert_paths_agree(
        lambda p: lambda x, s: upfirdn2d.upfirdn2d(x * s, kernel, up, down, (2, 1), policy=p),
        x,
        jnp.asarray(1.3),
    )


def test_modulated_conv_kernel_paths_agree():
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 6, 6, 4))
    w = jax.random.normal(jax.random.PRNGKey(6), (3, 3, 4, 5)) / 6.0
    styles = jax.random.normal(jax.random.PRNGKey(7), (2, 4))
    for kw in ({"upsample": True}, {"downsample": True}, {}):
        _assert_paths_agree(
            lambda p, kw=kw: lambda x, w: conv.modulated_conv2d(x, w, styles, policy=p, **kw), x, w
        )


def test_discriminator_r1_agrees_across_kernel_paths():
    """The R1 penalty's parameter gradient (second order through every layer) on both paths."""
    config = DiscriminatorConfig(size=8, channels=(8, 8))
    images = jax.random.normal(jax.random.PRNGKey(8), (4, 8, 8, 3))
    variables = Discriminator(config).init(jax.random.PRNGKey(9), images)

    def r1_grads(policy):
        d = Discriminator(config, policy=policy)

        def r1(v):
            g = jax.grad(lambda x: jnp.sum(d.apply(v, x)))(images)
            return jnp.sum(g**2)

        return jax.grad(r1)(variables)

    jax.tree.map(
        lambda a, b: assert_close(a, b, rtol=1e-4, atol=1e-6), r1_grads(CPU), r1_grads(XLA)
    )


def test_kernel_paths_differ_in_the_program(monkeypatch):
    """The switch is real: the CPU path computes a large convolution's weight gradient as
    products per kernel tap, the XLA path as a convolution; and `auto` takes the CPU path on this
    CPU host."""
    monkeypatch.setattr(conv, "_NATIVE_WEIGHT_GRADIENT_MAX", 0)  # this small input counts as large
    x = jnp.ones((1, 6, 6, 3))
    w = jnp.ones((3, 3, 3, 4))

    def grad_text(policy):
        fn = jax.grad(lambda w: jnp.sum(conv.conv2d(x, w, padding=1, policy=policy)))
        return jax.jit(fn).lower(w).as_text()

    assert "dot_general" in grad_text(CPU) and "dot_general" not in grad_text(XLA)
    assert grad_text(Policy()) == grad_text(CPU)
    assert FLOAT32.cpu_kernels and FLOAT32.precision == lax.Precision.HIGHEST
    assert Policy(matmul_precision="auto").precision == lax.Precision.HIGHEST  # on the CPU
    assert Policy(matmul_precision="default").precision == lax.Precision.DEFAULT


def test_bad_settings_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="kernels='gpu'"):
        Policy(kernels="gpu")
    config = {"compute": {"dtype": "float16", "matmul_precision": "auto", "kernels": "auto"}}

    class Config(dict):
        get = dict.get

    with pytest.raises(ConfigError, match=r"--config.compute.dtype='float16'.*bfloat16"):
        compute_policy(Config(config))
    assert compute_policy(Config({})) == Policy(matmul_precision="auto")
    # The config check refuses it before anything is written.
    full = get_config()
    full.generator.checkpoint, full.loss.name = "random", "multiscale_structural"
    check_gangealing_config(full, 1)
    full.compute.kernels = "gpu"
    with pytest.raises(ConfigError, match="--config.compute.kernels='gpu'.*auto, cpu, xla"):
        check_gangealing_config(full, 1)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_bfloat16_generator_and_stn_stay_close_with_float32_outputs():
    # Jitted: run op by op, the generator and the STN's gradient take several times longer.
    generator, gvars = tiny_generator(size=16, style_dim=16, channels=8)
    z = jax.random.normal(jax.random.PRNGKey(10), (2, 16))

    @functools.partial(jax.jit, static_argnums=0)
    def synthesize(policy, v, z):
        return Generator(generator.config, policy=policy).apply(v, z, noise_mode="const")

    f32, bf16 = synthesize(FLOAT32, gvars, z), synthesize(BF16, gvars, z)
    assert f32.dtype == bf16.dtype == jnp.float32
    assert 0 < _rel(bf16, f32) < 0.05  # bfloat16 keeps 8 bits: about 0.4% per product

    stn = STN(tiny_stn_config())
    svars = jax.jit(stn.init)(jax.random.PRNGKey(11), f32)
    svars = jax.tree.map(lambda v: v + 0.05 * jnp.sin(jnp.arange(v.size).reshape(v.shape)), svars)

    @functools.partial(jax.jit, static_argnums=0)
    @functools.partial(jax.value_and_grad, argnums=1, has_aux=True)
    def loss(policy, v):
        out = STN(tiny_stn_config(), policy=policy).apply(v, f32)
        return jnp.mean(out.image**2), out

    (l32, out32), g32 = loss(FLOAT32, svars)
    (l16, out16), g16 = loss(BF16, svars)
    assert out16.image.dtype == out16.grid.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    assert _rel(out16.grid, out32.grid) < 0.01 and abs(float(l16 / l32) - 1) < 0.02
    assert _rel(jax.tree.leaves(g16)[0], jax.tree.leaves(g32)[0]) < 0.1
