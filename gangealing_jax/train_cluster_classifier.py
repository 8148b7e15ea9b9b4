"""Train the cluster classifier of a clustering GANgealing run (num_heads > 1 and/or flips).

    python -m gangealing_jax.train_cluster_classifier --model runs/cars \
        --workdir runs/cars/classifier [--iters 55000] [--batch 40]

--model is the GANgealing work directory (config.json, model/). The classifier bundle is exported to
<workdir>/classifier; with --workdir inside the run, as above, the applications find it when given
the run (`apps.model.load_model`). Rerunning with the same --workdir resumes; SIGTERM saves and
exits.
"""

from absl import app, flags

from gangealing_jax.config_cli import start_main
from gangealing_jax.errors import entry_point
from gangealing_jax.training.cluster_classifier import train_classifier

_MODEL = flags.DEFINE_string("model", None, "GANgealing work directory (required)")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, logs, classifier (required)")
_ITERS = flags.DEFINE_integer("iters", 55_000, "training iterations")
_BATCH = flags.DEFINE_integer("batch", 40, "global fake images per iteration")
_LR = flags.DEFINE_float("lr", 1e-3, "base learning rate (Adam)")
_PERIOD = flags.DEFINE_float("period", 50_000.0, "cosine learning-rate period in iterations")
_SEED = flags.DEFINE_integer("seed", 0, "random seed (classifier init, fake samples)")
_CKPT_EVERY = flags.DEFINE_integer("ckpt_every", 50_000, "iterations between checkpoints")
_LOG_EVERY = flags.DEFINE_integer("log_every", 25, "iterations between scalar logs")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "devices of the mesh (0 = all)")


@entry_point
def main(argv):
    start_main(argv)
    if not _MODEL.value or not _WORKDIR.value:
        raise app.UsageError("--model and --workdir are required")
    result = train_classifier(
        _MODEL.value, _WORKDIR.value, iters=_ITERS.value, batch=_BATCH.value, lr=_LR.value,
        period=_PERIOD.value, seed=_SEED.value, ckpt_every=_CKPT_EVERY.value,
        log_every=_LOG_EVERY.value, num_devices=_NUM_DEVICES.value,
    )  # fmt: skip
    what = "interrupted" if result.interrupted else "finished"
    print(f"{what} at iteration {result.step}; classifier exported to {result.classifier_dir}")
    print({k: round(v, 6) for k, v in result.metrics.items()})


if __name__ == "__main__":
    app.run(main)
