"""How many forward/backward passes one GANgealing step takes its batch in.

A step's gradient is the mean over equal passes, so the split changes memory and speed, not the
result (beyond float rounding): z, noise and poses are drawn for the whole batch first.
`grad_accum` sets the fewest passes; `compute.images_per_pass` can ask for more.

Automatic splitting (images_per_pass = 0) acts on CPU only. There, XLA's kernels run slower per
image on large activations: on configs/bench_small.py (64x64 STN input, 128 channels, 2-core
CPU, jax 0.10.2) a batch of 8 in one pass took 1.57-1.61 s and in two passes of 4 1.44-1.48 s;
a batch of 40 in one pass 8.8-10.4 s, in five passes of 8 7.4-8.9 s and in eight of 5
8.0-8.4 s. On the embedded default (32x32 input, 32-64 channels, batch 16) one, two and four
passes ran alike (0.100-0.112 s), so the limit is counted in pixels at the STN's resolution.
Every pass is unrolled into the compiled step (compile time grows with the count: 16 s for one
pass of bench_small, 36 s for five), so automatic splitting stops at AUTO_MAX_PASSES.
"""

from __future__ import annotations

CPU_PIXELS_PER_PASS = 16_384  # per device, at the STN's input resolution
AUTO_MAX_PASSES = 5


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def passes_per_step(
    *,
    batch: int,
    grad_accum: int,
    devices: int,
    flow_size: int,
    images_per_pass: int,
    platform: str,
    multiple_of: int = 1,
) -> int:
    """Passes per step: grad_accum times a split of each device's share of a micro-batch.

    images_per_pass: 0 = automatic (see the module docstring), else at most that many images per
    device in one pass (the fewest passes that achieve it). Each pass keeps a multiple of
    `multiple_of` images per device (the equivariance term's stride) where that is possible.
    """
    share = batch // grad_accum // devices
    if images_per_pass:
        limit, max_split = images_per_pass, share
    elif platform == "cpu":
        limit, max_split = max(1, CPU_PIXELS_PER_PASS // flow_size**2), AUTO_MAX_PASSES
    else:
        return grad_accum
    splits = [d for d in _divisors(share) if (share // d) % multiple_of == 0 and d <= max_split]
    if not splits:
        return grad_accum
    fitting = [d for d in splits if share // d <= limit]
    return grad_accum * (min(fitting) if fitting else max(splits))
