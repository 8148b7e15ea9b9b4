"""Train GANgealing: a spatial transformer and a congealing vector against a frozen StyleGAN2.

    python -m gangealing_jax.train                      # the embedded default (configs/embedded.py)
    python -m gangealing_jax.train --config configs/cat.py --workdir runs/cat [--config.batch=40]

The work directory defaults to runs/<config name>. Rerunning with the same --workdir resumes from
its latest checkpoint. SIGTERM saves and exits. When the config names evaluation data
(`eval.data`), the finished run is scored by PCK-Transfer and `summary.json` is written.
"""

import json
import pathlib
import time

from absl import flags
from ml_collections import config_flags

import configs
from gangealing_jax.apps.evaluate import evaluate_run, write_summary
from gangealing_jax.config_cli import define_config_flag, run, start_main
from gangealing_jax.errors import entry_point
from gangealing_jax.training.gangealing_loop import train

DEFAULT_CONFIG = pathlib.Path(configs.__file__).resolve().parent / "embedded.py"
_CONFIG = define_config_flag(str(DEFAULT_CONFIG), "configs/*.py file")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "checkpoints, logs, visuals, model (default: runs/<config name>)"
)


@entry_point
def main(argv):
    start_main(argv)
    started = time.time()
    config = _CONFIG.value
    workdir = _WORKDIR.value or f"runs/{_config_name()}"
    result = train(config, workdir)
    what = "interrupted" if result.interrupted else "finished"
    print(f"{what} at iteration {result.step}; model exported to {result.model_dir}")
    print({k: round(v, 6) for k, v in result.metrics.items()})
    if config.eval.data and not result.interrupted:
        summary = evaluate_run(config, workdir, result.model_dir)
        summary["seconds"] = round(time.time() - started, 1)
        summary["collapse"] = result.collapse
        path = write_summary(workdir, summary)
        print(json.dumps({"pck": summary["pck"], "seconds": summary["seconds"]}))
        print(f"summary: {path}; congealed images: {pathlib.Path(workdir) / 'congealed_grid.png'}")


def _config_name() -> str:
    """Stem of the --config file."""
    path = config_flags.get_config_filename(flags.FLAGS["config"])
    return pathlib.Path(path).stem


if __name__ == "__main__":
    run(main)
