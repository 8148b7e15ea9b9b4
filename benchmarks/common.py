"""Shared timing helpers for the benchmark scripts (each prints one JSON line per case)."""

from __future__ import annotations

import json
import statistics
import time

import jax


def device_summary() -> dict:
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "devices": len(devices),
        "device": devices[0].device_kind,
    }


def flops_of(compiled) -> float | None:
    """FLOPs per call from XLA's cost analysis (None where the backend gives none)."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


def timed_calls(call, *, min_seconds: float = 0.0, min_iters: int = 3) -> float:
    """Median wall seconds of `call()` (which must block) over calls until both minimums are met.

    A median, not a mean: on a shared machine one call disturbed by another process would
    otherwise move the result.
    """
    times, elapsed = [], 0.0
    while len(times) < min_iters or elapsed < min_seconds:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        elapsed += times[-1]
    return statistics.median(times)


def time_compiled(fn, args, *, min_seconds: float = 2.0, min_iters: int = 3):
    """Compile `fn` for `args`, warm it up, then time calls until both minimums are met.

    Returns (median seconds per call, compile seconds, flops per call).
    """
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))  # warm-up
    per_call = timed_calls(
        lambda: jax.block_until_ready(compiled(*args)), min_seconds=min_seconds, min_iters=min_iters
    )
    return per_call, compile_s, flops_of(compiled)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
