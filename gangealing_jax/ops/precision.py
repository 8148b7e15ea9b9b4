"""The numerics policy of the conv nets: compute dtype, matmul precision and which kernels to use.

One `Policy` is built from the config (`compute.*`; its default, matmul_precision "auto", is
full precision on the CPU and the backend's default on GPU/TPU) and handed to every module that convolves
(generator, STN trunk and flow head, VGG/LPIPS, discriminator, cluster classifier); the ops take
it as an argument. Nothing here is a global: two models in one program can follow two policies.

What the policy does not touch, whatever it says: parameters (float32 master weights, cast to the
compute dtype only where a convolution reads them), sampling coordinates and affine algebra, the
similarity regression, mipmap level choice, PCA, loss reductions, optimizer state and EMA.
Convolutions and matmuls read their inputs in `dtype` and return `dtype`; bias, activations and
everything after them promote back to float32 (a float32 parameter is added), so in bfloat16 only
the products are rounded.

`kernels` picks between two implementations of the same convolutions and FIR filters:
- "cpu": custom VJPs that compute the weight gradients of large and of 1x1 convolutions as
  one matrix product per kernel tap, the stride-2 transposed convolution as four phases of a
  regular one, and FIR filters as shifted slices: on large inputs XLA:CPU's backward-filter and
  lhs-dilated convolutions are several times slower (ops/conv.py gives the sizes).
- "xla": plain lax convolutions differentiated by JAX. On GPU/TPU the native convolutions are fast
  and the per-tap products would only add passes over the activations.
- "auto": "cpu" when the default backend at trace time is the CPU, else "xla". Lowering for another
  platform from a CPU host (jax.export) must therefore name "xla".
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PRECISIONS = {
    "highest": lax.Precision.HIGHEST,
    "high": lax.Precision.HIGH,
    "default": lax.Precision.DEFAULT,
}
KERNELS = ("auto", "cpu", "xla")


@dataclasses.dataclass(frozen=True)
class Policy:
    """dtype: float32 | bfloat16; matmul_precision: auto | highest | high | default (auto: highest
    on the CPU, where it costs nothing, else the backend's default: TF32 on recent NVIDIA GPUs,
    one bfloat16 pass on TPU); kernels: auto | cpu | xla (see the module docstring)."""

    dtype: str = "float32"
    matmul_precision: str = "highest"
    kernels: str = "auto"

    def __post_init__(self):
        for name, allowed in (
            ("dtype", tuple(DTYPES)),
            ("matmul_precision", ("auto", *PRECISIONS)),
            ("kernels", KERNELS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; use one of {allowed}")

    @property
    def compute_dtype(self):
        """The dtype products are computed in; None for float32: the inputs' own (float64 in the
        gradient checks that enable x64)."""
        return None if self.dtype == "float32" else DTYPES[self.dtype]

    @property
    def precision(self) -> lax.Precision:
        if self.matmul_precision == "auto":
            return PRECISIONS["highest" if jax.default_backend() == "cpu" else "default"]
        return PRECISIONS[self.matmul_precision]

    @property
    def cpu_kernels(self) -> bool:
        if self.kernels == "auto":
            return jax.default_backend() == "cpu"
        return self.kernels == "cpu"

    def cast(self, x):
        """x in the compute dtype (float arrays only; float32 policies change nothing)."""
        if self.compute_dtype is None or not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return x.astype(self.compute_dtype)


def policy_from_fields(compute) -> Policy:
    """The Policy a config's or a bundle's `compute` mapping names; absent fields take the
    defaults, `matmul_precision` the backend's (auto). ValueError names a bad field."""
    compute = compute or {}
    fields = {k: str(compute[k]) for k in ("dtype", "matmul_precision", "kernels") if k in compute}
    fields.setdefault("matmul_precision", "auto")
    return Policy(**fields)


def widen(x):
    """x back in at least float32: where a reduced-precision product re-enters float32 code."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# A policy is static: a pytree with no leaves, so it can ride inside a jitted argument (the
# perceptual distance is a tree_util.Partial) without becoming a traced value.
jax.tree_util.register_pytree_node(Policy, lambda p: ((), p), lambda p, _: p)

# What every op and module uses when given no policy: float32 at full precision on any backend,
# so code that never names a policy (the mipmap's filters, tests) computes as it always did.
FLOAT32 = Policy()
