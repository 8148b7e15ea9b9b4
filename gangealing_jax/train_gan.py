"""Train a StyleGAN2 generator.

    python -m gangealing_jax.train_gan --config configs/gan/procedural.py --workdir runs/gan \
        [--config.steps=2000 ...]

Rerunning with the same --workdir resumes from its latest checkpoint. SIGTERM saves and exits.
"""

import pathlib

from absl import flags

from gangealing_jax.config_cli import define_config_flag, run, start_main
from gangealing_jax.errors import entry_point
from gangealing_jax.training.gan_loop import train_gan

_CONFIG = define_config_flag(None, "configs/gan/*.py file")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, samples and the export")
flags.mark_flags_as_required(["config", "workdir"])


@entry_point
def main(argv):
    start_main(argv)
    result = train_gan(_CONFIG.value, _WORKDIR.value)
    what = "interrupted" if result.interrupted else "finished"
    npz = pathlib.Path(_WORKDIR.value) / "generator.npz"
    print(f"{what} at iteration {result.step}; generator exported to {npz} (pass it as "
          f"--config.generator.checkpoint={npz} to gangealing_jax.train)")  # fmt: skip


if __name__ == "__main__":
    run(main)
