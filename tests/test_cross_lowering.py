"""Lowering for GPU and TPU from this CPU host (jax.export needs no device): the StableHLO of the
generator, the STN and the GANgealing train step carries the policy's dtype and precision, and on
those platforms none of the CPU kernels' weight-gradient products.

What cannot be checked here: compilation for those platforms (XLA's GPU/TPU compilers are not in
a CPU build of jaxlib), hence the kernels XLA would pick and their speed; see
benchmarks/accelerator.py for that on a device. `kernels="auto"` reads the backend at trace time,
which is the CPU here, so these lowerings name `kernels="xla"`, as a GPU/TPU process resolves it.
"""

import functools
import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

from gangealing_jax.losses.gangealing import ObjectiveSettings
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stylegan2 import Generator
from gangealing_jax.ops import conv
from gangealing_jax.ops.precision import Policy
from gangealing_jax.training.gangealing_step import StepSettings, train_step
from tests.test_train_step import DISTANCE, _setup
from tests.tiny_models import tiny_generator, tiny_stn_config

ACCELERATOR_BF16 = Policy(dtype="bfloat16", matmul_precision="default", kernels="xla")
ACCELERATOR_F32 = Policy(matmul_precision="high", kernels="xla")
# The CPU kernels' weight gradients: of the transposed convolution, patches (N, H, W, k*k, C)
# contracted with the input over batch and both spatial axes; of a large convolution, one product
# per kernel tap over the N*H*W rows of the shifted input (a dense layer's weight gradient
# contracts only the batch rows).
IM2COL = "contracting_dims = [0, 1, 2] x [0, 1, 2]"
PER_TAP = re.compile(r"dot_general .*contracting_dims = \[0\] x \[0\].*: \(tensor<(\d+)x\d+x")
MAX_BATCH_ROWS = 16  # more rows than any test batch here: a product over pixels


def _per_tap_products(text: str) -> int:
    return sum(int(m.group(1)) > MAX_BATCH_ROWS for m in PER_TAP.finditer(text))


def _convolutions(text: str) -> list[str]:
    return [line for line in text.splitlines() if "stablehlo.convolution" in line]


def _operand_types(line: str) -> list[str]:
    """Element types of a convolution's two operands, from its `: (tensor<..>, tensor<..>)`."""
    signature = line.rsplit(": (", 1)[1]
    return re.findall(r"tensor<[^>]*x(\w+)>", signature)[:2]


def _results(text: str) -> str:
    """The result types of the exported main function, space-separated."""
    signature = next(line for line in text.splitlines() if "func.func public @main(" in line)
    return " ".join(re.findall(r"tensor<[^>]*>", signature.split(") -> (", 1)[1]))


def _lower(fn, args, platform: str) -> str:
    return export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()


def _check(text: str, policy: Policy):
    """Every dense convolution (the conv nets') has the policy's operand dtype and precision.

    Grouped ones are FIR filters (blur, up/downsampling, mipmaps): they run in their input's dtype
    (float32 for images and mipmaps, the compute dtype inside the generator) and only the mipmap's
    keep full precision, so they are not held to the policy.
    """
    convs = _convolutions(text)
    dense = [line for line in convs if "feature_group_count = 1 :" in line]
    assert dense and len(dense) < len(convs), "the program has convolutions and FIR filters"
    dtype = "bf16" if policy.dtype == "bfloat16" else "f32"
    precision = policy.matmul_precision.upper()
    for line in dense:
        assert _operand_types(line) == [dtype, dtype], line[:300]
        if precision == "DEFAULT":  # the default is written as no precision_config at all
            assert "precision_config" not in line, line[:300]
        else:
            assert f"precision {precision}" in line, line[:300]
    assert IM2COL not in text and _per_tap_products(text) == 0


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_generator_and_stn_lower_with_the_policy(platform):
    generator, gvars = tiny_generator(size=16, style_dim=16, channels=8)
    stn_config = tiny_stn_config()
    z = jnp.zeros((2, 16))
    for policy in (ACCELERATOR_BF16, ACCELERATOR_F32):
        g = Generator(generator.config, policy=policy)
        text = _lower(lambda v, z, g=g: g.apply(v, z, noise_mode="const"), (gvars, z), platform)
        _check(text, policy)
        assert "tensor<2x16x16x3xf32>" in _results(text)  # float32 images out, any policy

        stn = STN(stn_config, policy=policy)
        images = jnp.zeros((2, 16, 16, 3))
        variables = jax.eval_shape(stn.init, jax.random.PRNGKey(0), images)

        def loss(v, x, stn=stn):
            return jnp.mean(stn.apply(v, x).image)

        text = _lower(jax.grad(loss), (variables, images), platform)
        _check(text, policy)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_train_step_lowers_with_the_policy(platform):
    """The whole step (G forward, STN forward and backward, optimizer, EMA), bfloat16."""
    generator, stn, optimizer, settings, opt_settings, state, frozen = _setup(batch=4)
    policy = ACCELERATOR_BF16
    step = functools.partial(
        train_step,
        generator=Generator(generator.config, policy=policy),
        stn=STN(stn.config, policy=policy),
        optimizer=optimizer,
        settings=StepSettings(ObjectiveSettings(inject=3, tv_weight=10.0), batch=4, anneal_psi=4),
        optimizer_settings=opt_settings,
    )
    text = _lower(step, (state, frozen, DISTANCE), platform)
    _check(text, policy)
    # Parameters, optimizer state and EMA stay float32: no bfloat16 value leaves the step.
    results = _results(text)
    assert "bf16" not in results and "f32" in results


def test_cpu_kernels_show_their_patterns(monkeypatch):
    """The checks above can fail: the CPU kernels do leave their patterns in the lowered program."""
    # Every convolution's weight gradient by per-tap products, as large ones are on the CPU.
    monkeypatch.setattr(conv, "_NATIVE_WEIGHT_GRADIENT_MAX", 0)
    stn = STN(tiny_stn_config(), policy=Policy(kernels="cpu"))
    images = jnp.zeros((2, 16, 16, 3))
    variables = jax.eval_shape(stn.init, jax.random.PRNGKey(0), images)
    text = _lower(
        jax.grad(lambda v, x: jnp.mean(stn.apply(v, x).image)), (variables, images), "cuda"
    )
    assert _per_tap_products(text) >= 9  # at least one 3x3 convolution's taps
    generator, gvars = tiny_generator(size=16, style_dim=16, channels=8)
    g = Generator(generator.config, policy=Policy(kernels="cpu"))
    z = jnp.zeros((2, 16))
    text = _lower(jax.grad(lambda v: jnp.mean(g.apply(v, z, noise_mode="const"))), (gvars,), "cuda")
    assert IM2COL in text  # the transposed (upsampling) convolutions' weight gradients
