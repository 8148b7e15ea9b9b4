"""Train GANgealing: a spatial transformer and a congealing vector against a frozen StyleGAN2.

    python -m gangealing_jax.train --config configs/cat.py --workdir runs/cat [--config.batch=40]

Rerunning with the same --workdir resumes from its latest checkpoint. SIGTERM saves and exits.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from gangealing_jax.convert.state_dict import CheckpointError
from gangealing_jax.losses.perceptual import MissingWeightsError
from gangealing_jax.training.checkpoints import CheckpointDiskFullError
from gangealing_jax.training.gangealing_loop import train
from gangealing_jax.training.metrics_log import NonFiniteLossError

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/gangealing", "checkpoints, logs, visuals, model")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    try:
        result = train(_CONFIG.value, _WORKDIR.value)
    except (
        NonFiniteLossError, CheckpointDiskFullError, CheckpointError, MissingWeightsError
    ) as err:  # fmt: skip
        raise SystemExit(f"error: {err}") from None
    what = "interrupted" if result.interrupted else "finished"
    print(f"{what} at iteration {result.step}; model exported to {result.model_dir}")
    print({k: round(v, 6) for k, v in result.metrics.items()})


if __name__ == "__main__":
    app.run(main)
