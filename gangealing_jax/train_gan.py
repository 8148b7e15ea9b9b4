"""Train a StyleGAN2 generator.

    python -m gangealing_jax.train_gan --config configs/gan/procedural.py --workdir runs/gan \
        [--config.steps=2000 ...]

Rerunning with the same --workdir resumes from its latest checkpoint. SIGTERM saves and exits.
"""

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from gangealing_jax.errors import entry_point
from gangealing_jax.training.gan_loop import train_gan

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/gan/*.py file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, samples and the export")
flags.mark_flags_as_required(["config", "workdir"])


@entry_point
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    result = train_gan(_CONFIG.value, _WORKDIR.value)
    what = "interrupted" if result.interrupted else "finished"
    npz = pathlib.Path(_WORKDIR.value) / "generator.npz"
    print(f"{what} at iteration {result.step}; generator exported to {npz} (pass it as "
          f"--config.generator.checkpoint={npz} to gangealing_jax.train)")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
