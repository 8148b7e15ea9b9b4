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

# Several tests build the same step (a run and its resumed copy): reuse compiled executables.
_CACHE_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "gangealing_jax_test_xla_cache")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
