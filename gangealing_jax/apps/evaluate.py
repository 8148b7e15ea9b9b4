"""Scoring a finished training run: PCK-Transfer against the identity warp, and congealed visuals.

`evaluate_run` is what `python -m gangealing_jax.train` calls after training when `eval.data` is
set; it writes `summary.json`, `congealed_average.png` and `congealed_grid.png` to the work
directory. With eval.data = "procedural", held-out images of the procedural family `eval.family`
are rendered once into `workdir/eval_data` (a prepared dataset) and reused by later runs.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax import atomic
from gangealing_jax.apps.model import AlignmentModel, load_model
from gangealing_jax.apps.pck import (
    congeal_each,
    congeals_alone,
    evaluate_pck,
    stn_input,
    thresholds,
)
from gangealing_jax.apps.pck_metric import pair_counts, visibility
from gangealing_jax.data import families, procedural
from gangealing_jax.data.prepared import PreparedDataset, write_procedural_dataset
from gangealing_jax.training.metrics_log import image_grid, save_png

PROCEDURAL = "procedural"
GRID_IMAGES = 64  # congealed images shown in congealed_grid.png
AVERAGED_IMAGES = 500  # congealed images averaged in congealed_average.png
# Host memory the per-image congealed outputs may take (images and grids, float32); a larger
# evaluation set congeals the images of each pair instead.
CONGEALED_BYTES_MAX = 512 * 2**20


def procedural_eval_config(eval_config) -> procedural.ProceduralConfig:
    return families.family_config(
        eval_config.get("family", "faces"),
        resolution=int(eval_config.resolution),
        clutter_range=tuple(int(v) for v in eval_config.clutter_range),
    )


def evaluation_dataset(eval_config, workdir: pathlib.Path) -> PreparedDataset:
    """The prepared dataset named by eval.data, rendering the procedural one when asked to."""
    if eval_config.data != PROCEDURAL:
        return PreparedDataset(str(eval_config.data))
    path = workdir / "eval_data"
    family = procedural_eval_config(eval_config)
    if (path / "meta.json").is_file():
        dataset = PreparedDataset(str(path))
        meta = dataset.meta
        same = (
            meta.get("seed") == int(eval_config.seed)
            and meta.get("family", "faces") == eval_config.get("family", "faces")
            and len(dataset) == int(eval_config.count)
            and len(dataset.pairs) == int(eval_config.num_pairs)
            and meta.get("procedural_config", {}).get("resolution") == family.resolution
            and list(meta.get("procedural_config", {}).get("clutter_range", []))
            == list(family.clutter_range)
        )
        if same:
            return dataset
        raise FileExistsError(
            f"{path} holds another evaluation set; delete it or use a new --workdir"
        )
    return write_procedural_dataset(
        str(path),
        int(eval_config.count),
        int(eval_config.seed),
        family,
        num_pairs=int(eval_config.num_pairs),
        family=eval_config.get("family", "faces"),
    )


def congealed_images(model: AlignmentModel, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """(M, R, R, 3) congealed copies in [-1, 1] of uint8 images (N, R, R, 3), at their own size
    (M = N * heads for a clustering model: every image by every head)."""
    flow = model.flow_size

    @jax.jit
    def run(chunk):
        source = chunk.astype(jnp.float32) / 127.5 - 1.0
        return model.congeal(stn_input(source, flow), source, output_resolution=source.shape[1])

    outputs = [
        np.asarray(run(jnp.asarray(images[i : i + batch])).image)
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(outputs)


def evaluate_run(config, workdir, model_dir) -> dict:
    """PCK of the trained STN and of the identity warp, plus the congealed visuals."""
    workdir = pathlib.Path(workdir)
    dataset = evaluation_dataset(config.eval, workdir)
    model = load_model(model_dir)
    model = model._replace(test_time=dict(model.test_time, flips=bool(config.eval.flips)))
    options = dict(
        protocol=config.eval.protocol,
        alphas=tuple(float(a) for a in config.eval.alphas),
        batch_size=int(config.eval.batch),
        num_pairs=int(config.eval.num_pairs),
        seed=int(config.seed),
    )
    # Each image is congealed once for all its pairs. A similarity-only warp carries points by
    # its matrix alone, so that one pass, at the images' size, also gives the visuals; a flow
    # stage's points are read off its grid at the STN's own output size, as per pair.
    outputs, similarity_only = None, model.stn.config.transforms == ("similarity",)
    size = dataset.resolution if similarity_only else model.flow_size
    if congeals_alone(model) and len(dataset) * size * size * 5 * 4 <= CONGEALED_BYTES_MAX:
        outputs = congeal_each(
            model, dataset.images, output_resolution=size if similarity_only else None
        )
    stn = evaluate_pck(model, dataset, congealed=outputs, **options)
    identity = evaluate_pck(None, dataset, **options)
    shown = np.asarray(dataset.images[: min(len(dataset), AVERAGED_IMAGES)])
    if outputs is not None and similarity_only:
        congealed = outputs.image[: len(shown)]
    else:
        congealed = congealed_images(model, shown)
    save_png(image_grid(congealed[:GRID_IMAGES]), workdir / "congealed_grid.png")
    save_png(image_grid(shown[:GRID_IMAGES] / 127.5 - 1.0), workdir / "input_grid.png")
    average = congealed.mean(axis=0, keepdims=True)
    save_png(image_grid(average, padding=0), workdir / "congealed_average.png")
    ceiling = similarity_ceiling(dataset, options["alphas"], config.eval.protocol)
    extra = {}
    if ceiling is not None:
        extra = {
            "similarity_ceiling": ceiling,
            "pck_of_ceiling": {k: stn.pck[k] / v if v else None for k, v in ceiling.items()},
        }
    return {
        **extra,
        "pck": {"stn": stn.pck, "identity": identity.pck},
        "pck_bootstrap_std": {"stn": stn.stderr, "identity": identity.stderr},
        "protocol": config.eval.protocol,
        "pairs": stn.pairs,
        "keypoints": stn.keypoints,
        "eval_data": str(dataset.path),
    }


def similarity_ceiling(dataset: PreparedDataset, alphas, protocol: str) -> dict | None:
    """PCK-Transfer per alpha that undoing every image's exact similarity pose reaches on the
    dataset's pairs: the best a similarity STN can do. None unless the dataset is a rendered
    procedural set scored under the spair protocol (the poses are known only there)."""
    config = families.config_from_meta(dataset.meta)
    if config is None or protocol != "spair" or len(dataset.pairs) == 0:
        return None
    name, seed = dataset.meta.get("family", "faces"), int(dataset.meta["seed"])
    canonical, scales = families.canonical_keypoints_of(name, seed, len(dataset), config)
    src, dst = np.asarray(dataset.pairs).T
    kps_a, kps_b = np.asarray(dataset.keypoints[src]), np.asarray(dataset.keypoints[dst])
    # The source's keypoints through the shared canonical frame into the target image: off the
    # target's own by their canonical difference, in the target's pixels (rotation keeps length).
    estimate = kps_b[..., :2] + (canonical[src] - canonical[dst]) * scales[dst, None, None]
    vis = visibility(kps_a, kps_b)
    counts = pair_counts(estimate, kps_b, thresholds(dataset, dst, protocol), alphas, vis)
    return {f"{a:g}": float(v) for a, v in zip(alphas, counts.sum(0) / vis.sum(), strict=True)}


def write_summary(workdir, summary: dict) -> pathlib.Path:
    path = pathlib.Path(workdir) / "summary.json"
    atomic.write_json(path, summary, indent=2)
    return path
