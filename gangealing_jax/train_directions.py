"""Learn latent directions of a frozen generator (Voynov & Babenko 2020).

    python -m gangealing_jax.train_directions --config configs/directions/default.py \
        --workdir runs/directions [--config.num_directions=32 ...]

Writes <workdir>/directions.npz (show it with `python -m gangealing_jax.directions --method
learned --directions ...`, or congeal along it with --config.congealing.basis=...). Rerunning
with the same --workdir resumes; SIGTERM saves and exits.
"""

from absl import flags

from gangealing_jax.config_cli import define_config_flag, run, start_main
from gangealing_jax.errors import entry_point
from gangealing_jax.training.directions_loop import train_directions

_CONFIG = define_config_flag(None, "configs/directions/*.py file")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, logs and directions.npz")
flags.mark_flags_as_required(["config", "workdir"])


@entry_point
def main(argv):
    start_main(argv)
    result = train_directions(_CONFIG.value, _WORKDIR.value)
    what = "interrupted" if result.interrupted else "finished"
    print(f"{what} at iteration {result.step}; directions written to {result.directions_path}")
    print({k: round(v, 6) for k, v in result.metrics.items()})


if __name__ == "__main__":
    run(main)
