"""PCK-Transfer of a trained STN on a prepared dataset with keypoints.

    python -m gangealing_jax.apps.pck --model runs/cat --data data/spair_cat [--protocol spair]
        [--alphas 0.1,0.05,0.01] [--flips] [--out pck.json]

Each pair's keypoints are congealed with the source image's warp and read off the target
image's warp (`apps.points`). Protocols, as the reference scores them:
- spair: the dataset's fixed pairs, one way, threshold alpha * max side of the target's bbox;
- cub:   seeded random pairs, transferred both ways, threshold alpha * image side.
Error bars are bootstrap resamples of the pairs. Batches are sharded over every device.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax.apps import points as point_ops
from gangealing_jax.apps.model import AlignmentModel, load_model, stn_input
from gangealing_jax.apps.pck_metric import bbox_threshold, pair_counts, visibility
from gangealing_jax.apps.routing import route
from gangealing_jax.data.prepared import PreparedDataset, random_pairs
from gangealing_jax.errors import ConfigError, InputFileError, entry_point
from gangealing_jax.models.stn import STNOutput
from gangealing_jax.training.parallel import batch_sharding, make_mesh

PROTOCOLS = ("spair", "cub")


class PCKReport(NamedTuple):
    pck: dict  # alpha (str) -> fraction of visible keypoints transferred within the threshold
    stderr: dict  # alpha -> bootstrap standard deviation
    interval: dict  # alpha -> [2.5th, 97.5th] bootstrap percentile
    pairs: int  # transfers scored (both directions count for cub)
    keypoints: int  # visible keypoint transfers scored

    def to_dict(self) -> dict:
        return self._asdict()


def transfer_batch(
    model: AlignmentModel, images_a, images_b, points_a, points_b, permutation, cluster=None
):
    """(estimated B keypoints, A keypoints, B keypoints) per pair, the last two as scored: with
    flips, mirrored and relabelled where an image was mirrored. images_*: uint8 NHWC.

    A clustering model sends both images of a pair through one head, A's (from its classifier,
    or `cluster`), so that the points cross a single congealed space; each image is mirrored as
    `apps.routing` decides for that head."""
    flow = model.flow_size
    source_a = jnp.asarray(images_a, jnp.float32) / 127.5 - 1.0
    source_b = jnp.asarray(images_b, jnp.float32) / 127.5 - 1.0
    heads_a = heads_b = None
    if model.stn.config.num_heads > 1:
        flips = bool(model.test_time.get("flips"))
        route_a = route(model, source_a, flips=flips, cluster=cluster)
        route_b = route(model, source_b, flips=flips, cluster=route_a.heads)
        points_a = point_ops.mirror_points(
            jnp.asarray(points_a), route_a.flipped, source_a.shape[2], permutation
        )
        points_b = point_ops.mirror_points(
            jnp.asarray(points_b), route_b.flipped, source_b.shape[2], permutation
        )
        source_a, source_b = route_a.inputs, route_b.inputs
        heads_a, heads_b = route_a.heads, route_b.heads
    elif model.test_time.get("flips"):
        if source_a.shape[1] % flow:
            raise InputFileError(
                f"flip matching needs images whose size is a multiple of flow_size {flow}; "
                f"these are {source_a.shape[1]} px (prepare the data at a multiple)"
            )
        match = point_ops.match_flips(
            model.stn, model.variables, source_a, source_b, points_a, points_b, permutation,
            **model.forward_settings,
        )  # fmt: skip
        source_a, source_b = match.images_a, match.images_b
        points_a, points_b = match.points_a, match.points_b
    out_a = model.congeal(stn_input(source_a, flow), source_a, heads=heads_a)
    out_b = model.congeal(stn_input(source_b, flow), source_b, heads=heads_b)
    return transfer_between(out_a, out_b, points_a, source_b.shape[2], flow), points_a, points_b


def transfer_between(out_a: STNOutput, out_b: STNOutput, points_a, size: int, flow: int):
    """A's keypoints (pixels) through A's warp into the congealed space and out through B's:
    their estimate in B (pixels). out_*: the STN outputs of the pairs' images, row by row."""
    congealed = point_ops.congealed_points_from_output(out_a, points_a[..., :2], size)
    return point_ops.source_points_from_output(
        out_b, congealed, size, input_size=flow, normalize_input_points=out_b.flow is not None
    )


def congeals_alone(model: AlignmentModel) -> bool:
    """Whether each image's warp is its own, whatever pair it is in (see congeal_each)."""
    return model.stn.config.num_heads == 1 and not model.test_time.get("flips")


def congeal_each(
    model: AlignmentModel, images, *, output_resolution=None, batch_size: int = 32, mesh=None
) -> STNOutput:
    """The STN output of every image (uint8 NHWC), on the host: one pass per image, however
    many pairs it is in. Single-head models without flip matching only (the others choose each
    image's head or mirror by the pair it is in). output_resolution as STN takes it (None, as
    `transfer_batch` congeals: the STN's own output size)."""
    if not congeals_alone(model):
        raise ValueError("congeal_each needs a single-head model without flip matching")
    mesh = make_mesh() if mesh is None else mesh
    devices = mesh.devices.size
    batch_size = max(devices, -(-batch_size // devices) * devices)
    flow = model.flow_size

    @jax.jit
    def run(weights, chunk):
        source = chunk.astype(jnp.float32) / 127.5 - 1.0
        return model.with_weights(weights).congeal(
            stn_input(source, flow), source, output_resolution=output_resolution
        )

    outputs = []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start : start + batch_size])
        count = len(chunk)
        # Padded to one batch shape: one compilation for every chunk.
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - count, axis=0)])
        out = run(model.weights, jax.device_put(chunk, batch_sharding(mesh)))
        outputs.append(jax.tree.map(lambda x, n=count: np.asarray(x)[:n], out))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def _rows(output: STNOutput, index) -> STNOutput:
    return jax.tree.map(lambda x: x[index], output)


def protocol_pairs(dataset: PreparedDataset, protocol: str, num_pairs: int, seed: int):
    """(M, 2) (source, target) index pairs scored under `protocol`."""
    if protocol == "spair":
        if len(dataset.pairs) == 0:
            raise InputFileError(f"{dataset.path} holds no test pairs; use --protocol cub")
        return np.asarray(dataset.pairs)
    if protocol == "cub":
        one_way = random_pairs(len(dataset), num_pairs, np.random.default_rng(seed))
        return np.concatenate([one_way, one_way[:, ::-1]])  # both directions
    raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def thresholds(dataset: PreparedDataset, targets: np.ndarray, protocol: str) -> np.ndarray:
    if protocol == "cub":
        return np.full(len(targets), dataset.resolution, np.float32)
    boxes = np.asarray(dataset.bboxes[targets])
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return bbox_threshold(1.0, sides)


def bootstrap(correct: np.ndarray, visible: np.ndarray, samples: int, seed: int):
    """(std (A,), low (A,), high (A,)) of PCK over pair resamples with replacement."""
    if samples < 1 or len(visible) < 2:
        zeros = np.zeros(correct.shape[1])
        return zeros, zeros, zeros
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(visible), (samples, len(visible)))
    values = correct[index].sum(axis=1) / np.maximum(visible[index].sum(axis=1, keepdims=True), 1)
    return values.std(axis=0), np.percentile(values, 2.5, axis=0), np.percentile(values, 97.5, 0)


def evaluate_pck(
    model: AlignmentModel | None,
    dataset: PreparedDataset,
    *,
    protocol: str = "spair",
    alphas=(0.1, 0.05, 0.01),
    batch_size: int = 16,
    num_pairs: int = 10_000,
    seed: int = 0,
    bootstrap_samples: int = 1000,
    cluster: int | None = None,
    mesh=None,
    congealed: STNOutput | None = None,
) -> PCKReport:
    """PCK-Transfer of `model`; model=None scores the identity warp (keypoints copied over).
    cluster: the head of a clustering model for every pair (default: its classifier decides).
    congealed: `congeal_each(model, dataset.images)`, when already computed: the pairs are then
    scored from those outputs instead of congealing both images of every pair."""
    pairs = protocol_pairs(dataset, protocol, num_pairs, seed)
    mesh = make_mesh() if mesh is None else mesh
    devices = mesh.devices.size
    batch_size = max(devices, -(-batch_size // devices) * devices)
    sharding = batch_sharding(mesh)
    permutation = dataset.flip_permutation
    transfer = gathered = None
    if congealed is not None:
        if model is None:
            raise ValueError("congealed outputs are scored with the model they came from")
        # What the point transfer reads of each image's warp, on the device once.
        warps = jax.device_put(congealed._replace(image=None, similarity_image=None))
        size, flow = dataset.resolution, model.flow_size
        gathered = jax.jit(
            lambda w, src, dst, pa: transfer_between(_rows(w, src), _rows(w, dst), pa, size, flow)
        )  # fmt: skip
    elif model is not None:
        transfer = jax.jit(
            lambda a, b, pa, pb: transfer_batch(model, a, b, pa, pb, permutation, cluster)
        )  # fmt: skip
    correct, visible = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        count = len(chunk)
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - count, axis=0)])
        src, dst = padded[:, 0], padded[:, 1]
        kps_a, kps_b = np.asarray(dataset.keypoints[src]), np.asarray(dataset.keypoints[dst])
        if model is None:  # identity: same resolution, so the keypoints stay where they are
            estimate = kps_a[..., :2]
        elif gathered is not None:
            estimate = np.asarray(gathered(warps, src, dst, kps_a))
        else:
            arrays = (dataset.images[src], dataset.images[dst], kps_a, kps_b)
            arrays = [jax.device_put(np.asarray(a), sharding) for a in arrays]
            estimate, kps_a, kps_b = (np.asarray(a) for a in jax.device_get(transfer(*arrays)))
        vis = visibility(kps_a, kps_b)
        limit = thresholds(dataset, dst, protocol)
        correct.append(pair_counts(estimate, kps_b, limit, alphas, vis)[:count])
        visible.append(vis.sum(axis=1)[:count])
    correct, visible = np.concatenate(correct), np.concatenate(visible)
    if visible.sum() == 0:
        raise InputFileError(f"{dataset.path}: no keypoint is visible in both images of any pair")
    pck = correct.sum(axis=0) / visible.sum()
    std, low, high = bootstrap(correct, visible, bootstrap_samples, seed + 1)
    keys = [f"{a:g}" for a in alphas]
    return PCKReport(
        pck={k: float(v) for k, v in zip(keys, pck, strict=True)},
        stderr={k: float(v) for k, v in zip(keys, std, strict=True)},
        interval={k: [float(lo), float(hi)] for k, lo, hi in zip(keys, low, high, strict=True)},
        pairs=len(pairs),
        keypoints=int(visible.sum()),
    )


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="work directory, model bundle or .pt")
    parser.add_argument("--data", required=True, help="prepared dataset with keypoints")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="spair")
    parser.add_argument("--alphas", default="0.1,0.05,0.01")
    parser.add_argument("--flips", action="store_true", help="flip-aware transfer")
    parser.add_argument("--iters", type=int, default=None, help="similarity iterations")
    parser.add_argument(
        "--mirror_average", action=argparse.BooleanOptionalAction, default=None,
        help="regress each similarity from the image and its mirror (default: the model's)",
    )  # fmt: skip
    parser.add_argument("--cluster", type=int, default=None, help="head of a clustering model")
    parser.add_argument("--classifier", default=None, help="cluster classifier (default: found)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num_pairs", type=int, default=10_000, help="cub protocol pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--identity", action="store_true", help="also score the identity warp")
    parser.add_argument("--out", default="", help="write the report as JSON here")
    args = parser.parse_args(argv)
    model = load_model(args.model, classifier=args.classifier)
    test_time = dict(model.test_time, flips=args.flips or model.test_time.get("flips", False))
    if args.iters is not None:
        test_time["iters"] = args.iters
    if args.mirror_average is not None:
        test_time["mirror_average"] = args.mirror_average
    model = model._replace(test_time=test_time)
    dataset = PreparedDataset(args.data)
    options = dict(
        protocol=args.protocol,
        alphas=tuple(float(a) for a in args.alphas.split(",")),
        batch_size=args.batch,
        num_pairs=args.num_pairs,
        seed=args.seed,
    )
    report = {"stn": evaluate_pck(model, dataset, cluster=args.cluster, **options).to_dict()}
    if args.identity:
        report["identity"] = evaluate_pck(None, dataset, **options).to_dict()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
