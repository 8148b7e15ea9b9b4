"""Training schedules: psi annealing and the decaying cosine learning rate with warm restarts.

Iterations are counted from 1, as in the reference training loop: iteration ``i`` first trains with
``psi(i)`` and the current learning rate, then (once psi has reached 0, i.e. ``i > anneal_psi``)
moves the learning rate schedule to epoch ``(i - anneal_psi) / period``. The learning rate used by
iteration ``i`` is therefore ``lr_after_iteration(i - 1)``, which is exactly what an optax schedule
sees as its update count (0 for the first update): see `make_lr_schedule`.

Learning rate (SGDR with a per-cycle decay). Cycle ``n`` (counted from 0) starts at epoch
``S_n = T_0 * (1 + T_mult + ... + T_mult**(n-1))`` and lasts ``T_0 * T_mult**n`` epochs; within it

    lr = decay**n * (eta_min + (base_lr - eta_min) * (1 + cos(pi * (epoch - S_n) / T_i)) / 2).

The restart index ``n`` is counted exactly (integer comparisons). The reference implementation takes
a floating-point logarithm instead, which under-counts at some exact restart epochs when
``T_mult`` is not 2 (for ``T_mult=3``, epoch 121 gave lr 0.0 instead of ``base_lr * decay**5``);
for ``T_mult`` in {1, 2} both agree everywhere.

Two forms are provided: Python floats (float64, bit-for-bit the reference's arithmetic, for logging
and tests) and jnp (float32, traceable, for use inside a jitted step or as an optax schedule).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------------
# psi annealing (truncation of the congealing target towards the learned mode)
# ---------------------------------------------------------------------------------------------


def cosine_anneal(i, maxval: float, minval: float, num_steps: int):
    """Half-cosine from ``maxval`` (i=0) to ``minval`` (i=num_steps). float32, traceable ``i``."""
    angle = jnp.pi * (jnp.asarray(i, jnp.float32) / num_steps)
    return minval + 0.5 * (maxval - minval) * (1.0 + jnp.cos(angle))


def linear_anneal(i, maxval: float, minval: float, num_steps: int):
    """Straight line from ``maxval`` (i=0) to ``minval`` (i=num_steps). float32, traceable ``i``."""
    # Scaling the remaining steps (exact integers) lands on minval at the end even where XLA
    # replaces the division by a reciprocal multiplication; psi never overshoots below minval.
    remaining = num_steps - jnp.asarray(i, jnp.float32)
    return minval + (maxval - minval) * (remaining / num_steps)


PSI_ANNEALING: dict[str, Callable] = {"cosine": cosine_anneal, "linear": linear_anneal}


def psi_at_iteration(i, anneal_psi: int, kind: str = "cosine"):
    """psi used by 1-based iteration ``i``: annealed from 1 to 0 over ``anneal_psi`` iterations, then 0."""
    try:
        anneal = PSI_ANNEALING[kind]
    except KeyError:
        known = sorted(PSI_ANNEALING)
        raise ValueError(f"unknown psi annealing {kind!r}; expected one of {known}") from None
    i = jnp.asarray(i)
    return jnp.where(i <= anneal_psi, anneal(i, 1.0, 0.0, anneal_psi), 0.0).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# decaying cosine annealing with warm restarts: Python float (float64) form
# ---------------------------------------------------------------------------------------------


def _check_cycle_args(t_0: int, t_mult: int) -> None:
    if not isinstance(t_0, int) or t_0 <= 0:
        raise ValueError(f"t_0 must be a positive integer, got {t_0!r}")
    if not isinstance(t_mult, int) or t_mult < 1:
        raise ValueError(f"t_mult must be an integer >= 1, got {t_mult!r}")


def cycle_start(n: int, t_0: int, t_mult: int) -> int:
    """First epoch of cycle ``n`` (an integer): T_0 * (1 + T_mult + ... + T_mult**(n-1))."""
    if t_mult == 1:
        return t_0 * n
    return t_0 * (t_mult**n - 1) // (t_mult - 1)


def restart_index(epoch: float, t_0: int = 1, t_mult: int = 1) -> int:
    """Number of restarts before ``epoch``: the largest n with cycle_start(n) <= epoch, exactly."""
    _check_cycle_args(t_0, t_mult)
    if epoch < 0:
        raise ValueError(f"epoch must be non-negative, got {epoch}")
    if t_mult == 1:
        return math.floor(epoch) // t_0  # floor(e / T_0) == floor(floor(e) / T_0) for integer T_0
    n = 0
    while cycle_start(n + 1, t_0, t_mult) <= epoch:  # int-vs-float comparison is exact in Python
        n += 1
    return n


def decaying_cosine_lr(
    epoch: float,
    base_lr: float,
    *,
    t_0: int = 1,
    t_mult: int = 1,
    decay: float = 0.9,
    eta_min: float = 0.0,
) -> float:
    """Learning rate at a (fractional) ``epoch`` >= 0, as a Python float."""
    n = restart_index(epoch, t_0, t_mult)
    t_cur = epoch - cycle_start(n, t_0, t_mult)
    t_i = t_0 * t_mult**n
    cosine = eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
    return decay**n * cosine


def lr_epoch_after_iteration(i: int, anneal_psi: int, period: float) -> float | None:
    """Epoch the schedule moves to at the end of 1-based iteration ``i``; None while psi anneals."""
    if i <= anneal_psi:
        return None
    return (i - anneal_psi) / period


def lr_after_iteration(
    i: int,
    base_lr: float,
    *,
    anneal_psi: int,
    period: float,
    t_mult: int,
    decay: float,
    t_0: int = 1,
    eta_min: float = 0.0,
) -> float:
    """Learning rate held after 1-based iteration ``i`` (used by iteration i+1). i=0: the initial lr.

    The schedule stays at epoch 0 (lr = base_lr) until psi has been annealed to 0.
    """
    epoch = lr_epoch_after_iteration(i, anneal_psi, period)
    return decaying_cosine_lr(
        0 if epoch is None else epoch, base_lr, t_0=t_0, t_mult=t_mult, decay=decay, eta_min=eta_min
    )


def lr_for_iteration(i: int, base_lr: float, **settings) -> float:
    """Learning rate the optimizer applies in 1-based iteration ``i`` (``lr_after_iteration(i - 1)``);
    ``settings`` are the keyword arguments of `lr_after_iteration`."""
    if i < 1:
        raise ValueError(f"iterations are counted from 1, got {i}")
    return lr_after_iteration(i - 1, base_lr, **settings)


def lr_cycle_iters(anneal_psi: int, period: float, total_iters: int, t_mult: int) -> list[int]:
    """Iterations at which a learning-rate cycle ends (checkpoints are saved there).

    Starts at ``anneal_psi - 1`` and adds ``period * t_mult**n`` (truncated to an integer) for
    ``n = 0 .. num_cycles-1``, where ``num_cycles`` is the largest n with
    ``t_mult**n <= (total_iters - anneal_psi) / period`` (computed exactly; the reference's
    floating-point logarithm can come out one short at exact powers). For ``t_mult == 1``, where the
    reference's logarithm is undefined, it is the number of whole periods that fit.
    """
    if not isinstance(t_mult, int) or t_mult < 1:
        raise ValueError(f"t_mult must be an integer >= 1, got {t_mult!r}")
    span = (total_iters - anneal_psi) / period
    if span < 1:
        num_cycles = 0
    elif t_mult == 1:
        num_cycles = math.floor(span)
    else:
        num_cycles = 0
        while t_mult ** (num_cycles + 1) <= span:
            num_cycles += 1
    ends = [anneal_psi - 1]
    for n in range(num_cycles):
        ends.append(int(ends[-1] + period * t_mult**n))
    return ends


# ---------------------------------------------------------------------------------------------
# jnp form (float32, traceable)
# ---------------------------------------------------------------------------------------------

_MAX_EPOCH = 2.0**31  # restart starts are tabulated up to here; no run gets near it


def decaying_cosine_lr_jnp(
    epoch,
    base_lr: float,
    *,
    t_0: int = 1,
    t_mult: int = 1,
    decay: float = 0.9,
    eta_min: float = 0.0,
):
    """`decaying_cosine_lr` on a traced float32 ``epoch`` >= 0. Schedule arguments are static."""
    _check_cycle_args(t_0, t_mult)
    epoch = jnp.asarray(epoch, jnp.float32)
    if t_mult == 1:
        n = jnp.floor(epoch / t_0)
        t_cur = epoch - n * t_0
        t_i = jnp.float32(t_0)
    else:
        starts = [0]  # cycle_start(n) for n = 0, 1, ... while below _MAX_EPOCH
        while starts[-1] < _MAX_EPOCH:
            starts.append(cycle_start(len(starts), t_0, t_mult))
        starts = np.asarray(starts, np.float64)
        lengths = np.asarray([t_0 * t_mult**k for k in range(len(starts))], np.float64)
        n = jnp.sum(epoch >= jnp.asarray(starts[1:], jnp.float32)).astype(jnp.int32)
        t_cur = epoch - jnp.asarray(starts, jnp.float32)[n]
        t_i = jnp.asarray(lengths, jnp.float32)[n]
    cosine = eta_min + (base_lr - eta_min) * (1.0 + jnp.cos(jnp.pi * t_cur / t_i)) / 2.0
    return jnp.power(jnp.float32(decay), n.astype(jnp.float32)) * cosine


def make_lr_schedule(
    base_lr: float,
    *,
    anneal_psi: int,
    period: float,
    t_mult: int,
    decay: float,
    t_0: int = 1,
    eta_min: float = 0.0,
) -> Callable:
    """optax-style schedule ``count -> lr`` (float32), ``count`` = number of updates already applied.

    The update with count ``c`` belongs to 1-based iteration ``c + 1`` and so uses
    ``lr_after_iteration(c)``.
    """
    _check_cycle_args(t_0, t_mult)

    def schedule(count):
        since_anneal = jnp.asarray(count, jnp.int32) - anneal_psi
        epoch = jnp.where(since_anneal > 0, since_anneal.astype(jnp.float32) / period, 0.0)
        return decaying_cosine_lr_jnp(
            epoch, base_lr, t_0=t_0, t_mult=t_mult, decay=decay, eta_min=eta_min
        )

    return schedule
