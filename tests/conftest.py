"""Test-session setup: 8 fake CPU devices (set before jax is imported) and fast compilation."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Parity tests compare float32 against the reference: no reduced-precision matmuls anywhere.
jax.config.update("jax_default_matmul_precision", "highest")

# Test graphs are small and run a few times: compile time dominates, so skip most XLA passes.
jax.config.update("jax_disable_most_optimizations", True)
