"""The cluster classifier: reference weights (torch layout) -> Flax, and initialisation from an STN.

Reference checkpoints of `train_cluster_classifier.py` hold the classifier under `classifier` and
the STN under `t_ema`. The architecture is read from the shapes: the trunk depth gives the input
size, the conv weights the channel table, `to_logits` the number of classes, and the input
downsampler's filter (when present) the supersize. Whether the classes include mirrored copies
(2K classes) needs the number of clusters K: it is taken from the STN of the same checkpoint, or
passed as `num_heads`.

The reference starts training from the similarity STN's weights (every tensor whose name both share:
the trunk `convs.*` and `final_conv.*`); `init_from_stn` does the same on Flax variables.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax.convert.bundle import is_bundle, load_bundle
from gangealing_jax.convert.state_dict import (
    CheckpointError,
    conv_layer_key,
    conv_weight_to_hwio,
    module_state,
    read_checkpoint,
    take,
)
from gangealing_jax.convert.stn import stn_config_from_state
from gangealing_jax.models.cluster_classifier import ClassifierConfig, ClusterClassifier
from gangealing_jax.models.stn import STNConfig
from gangealing_jax.ops.mipmap import tent_kernel
from gangealing_jax.ops.upfirdn2d import make_kernel

CLASSIFIER_KIND = "cluster_classifier"  # bundle kind written by training.cluster_classifier
TRUNK_MODULES = re.compile(r"convs_\d+|final_conv")  # shared with the similarity STN


def _where(path: str) -> str:
    return path or "checkpoint"


def _num_blocks(state) -> int:
    return len({m.group(1) for k in state if (m := re.match(r"convs\.(\d+)\.conv1\.", k))})


def classifier_config_from_state(
    state, path: str = "", num_heads: int | None = None
) -> ClassifierConfig:
    """Architecture of a torch-layout `ResnetClassifier` state dict (see module doc)."""
    blocks = _num_blocks(state)
    if blocks == 0 or "to_logits.weight" not in state:
        raise CheckpointError(
            f"{_where(path)}: not a cluster classifier (no 'convs.<i>.conv1.*' / 'to_logits.weight')"
        )
    size = 2 ** (blocks + 2)
    num_classes = take(state, "to_logits.weight", path=path).shape[0]
    if num_heads is None:
        raise CheckpointError(
            f"{_where(path)}: the classifier's {num_classes} classes are K clusters or K clusters "
            "x 2 flips; pass num_heads (or load it from a checkpoint that also holds the STN)"
        )
    if num_classes not in (num_heads, 2 * num_heads):
        raise CheckpointError(
            f"{_where(path)}: 'to_logits.weight' has {num_classes} classes, which is neither "
            f"num_heads={num_heads} nor 2 * num_heads"
        )
    table = {size: take(state, "convs.0.0.weight", path=path).shape[0]}
    for j in range(1, blocks + 1):
        table[2 ** (int(math.log2(size)) - j)] = take(
            state, f"convs.{j}.conv2.1.weight", path=path
        ).shape[0]
    final = take(state, "final_conv.0.weight", path=path).shape[0]
    if table.setdefault(4, final) != final:
        raise CheckpointError(
            f"{_where(path)}: 'final_conv.0.weight' has {final} channels, the 4x4 block {table[4]}"
        )
    factor = 1
    if "input_downsample.kernel_horz" in state:
        factor = take(state, "input_downsample.kernel_horz", path=path).shape[-1] // 2
    return ClassifierConfig(
        size=size,
        supersize=size * factor,
        channels=tuple(sorted(table.items())),
        num_heads=num_heads,
        flips=num_classes == 2 * num_heads,
    )


def _torch_key(names: tuple[str, ...]) -> tuple[str, str]:
    """Flax parameter path -> (torch key, layout)."""
    head, *rest = names
    rest = tuple(rest)
    if head == "convs_0":
        return conv_layer_key("convs.0", rest, False)
    if head == "final_conv":
        return conv_layer_key("final_conv", rest, False)
    if m := re.fullmatch(r"convs_(\d+)", head):
        sub, *leaf = rest  # every classifier ResBlock downsamples in conv2 and skip
        return conv_layer_key(f"convs.{m.group(1)}.{sub}", tuple(leaf), sub != "conv1")
    if head == "to_logits":
        return f"to_logits.{rest[0]}", "flat_linear" if rest[0] == "weight" else "plain"
    raise KeyError(names)


def _from_torch(value: np.ndarray, layout: str, shape) -> np.ndarray:
    if layout == "conv":
        value = conv_weight_to_hwio(value)
    elif layout == "flat_linear" and value.ndim == 2 and value.shape[1] == shape[0]:
        # torch flattens (C, 4, 4) features, the model (4, 4, C): (out, C*16) -> (16*C, out).
        out_dim, channels = value.shape[0], value.shape[1] // 16
        value = value.reshape(out_dim, channels, 4, 4).transpose(2, 3, 1, 0).reshape(shape)
    return np.ascontiguousarray(value, dtype=np.float32)


def _check_buffers(state, config: ClassifierConfig, path: str) -> set[str]:
    checked = set()
    factor = config.supersize // config.size
    expected = {
        "input_downsample.kernel_horz": tent_kernel(factor)[None, None, None, :],
        "input_downsample.kernel_vert": tent_kernel(factor)[None, None, :, None],
    }
    fir = make_kernel(config.blur_kernel)
    for key, value in state.items():
        if key.startswith("convs.") and key.endswith(".kernel"):
            target = fir
        elif key in expected:
            target = expected[key]
        else:
            continue
        value = np.asarray(value, np.float32)
        if not np.allclose(value, np.broadcast_to(target, value.shape), atol=1e-6):
            raise CheckpointError(
                f"{_where(path)}: buffer '{key}' differs from the value the model uses"
            )
        checked.add(key)
    return checked


def classifier_variables_from_state(state, path: str = "", num_heads: int | None = None):
    """(ClassifierConfig, {'params': ...}) from a torch-layout classifier state dict."""
    config = classifier_config_from_state(state, path, num_heads)
    in_channels = take(state, "convs.0.0.weight", path=path).shape[1]
    dummy = jnp.zeros((1, config.size, config.size, in_channels))
    template = jax.eval_shape(lambda: ClusterClassifier(config).init(jax.random.key(0), dummy))
    params, used = {}, set()
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(template["params"])[0]:
        names = tuple(k.key for k in key_path)
        torch_key, layout = _torch_key(names)
        value = _from_torch(take(state, torch_key, path=path), layout, leaf.shape)
        if value.shape != tuple(leaf.shape):
            raise CheckpointError(
                f"{_where(path)}: key '{torch_key}' has shape {tuple(np.shape(state[torch_key]))}, "
                f"which does not fit the inferred architecture (expected {tuple(leaf.shape)} "
                "after conversion)"
            )
        used.add(torch_key)
        node = params
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = value
    unknown = sorted(set(state) - used - _check_buffers(state, config, path))
    if unknown:
        raise CheckpointError(f"{_where(path)}: unexpected classifier keys {unknown[:5]}")
    return config, {"params": params}


def classifier_config_to_dict(config: ClassifierConfig) -> dict:
    d = dataclasses.asdict(config)
    d["channels"] = [list(pair) for pair in config.channels]
    d["blur_kernel"] = list(config.blur_kernel)
    return d


def classifier_config_from_dict(d: dict) -> ClassifierConfig:
    d = dict(d)
    d["channels"] = tuple(tuple(pair) for pair in d["channels"])
    d["blur_kernel"] = tuple(d["blur_kernel"])
    return ClassifierConfig(**d)


def load_classifier(
    path: str | os.PathLike, module: str = "classifier", num_heads: int | None = None
):
    """(ClassifierConfig, variables) from a reference `.pt`/`.npz` checkpoint (its `classifier`
    module; K is read from its `t_ema` unless given) or an exported bundle directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not is_bundle(path):
            path = os.path.join(path, "classifier")  # a classifier work directory
        meta, variables = load_bundle(path, kind=CLASSIFIER_KIND)
        return classifier_config_from_dict(meta["classifier"]), variables
    flat = read_checkpoint(path)
    state = module_state(flat, module, path)
    if num_heads is None and any(k.startswith("t_ema/") for k in flat):
        num_heads = stn_config_from_state(module_state(flat, "t_ema", path), path).num_heads
    return classifier_variables_from_state(state, path, num_heads)


def init_from_stn(classifier_params: dict, stn_params: dict, stn_config: STNConfig) -> dict:
    """Classifier params with the trunk (convs_*, final_conv) of the STN's first stage copied in.

    Both are `{'params': ...}` trees. The first stage must be a similarity stage (its trunk is the
    classifier's); a trunk tensor of a different shape is an error, as in the reference.
    """
    if stn_config.transforms[0] != "similarity":
        raise ValueError(
            f"the classifier starts from a similarity STN stage, got stages {stn_config.transforms}"
        )
    stage = stn_params["params"]["stns_0"]
    out = jax.tree.map(lambda x: x, classifier_params)  # new containers, same leaves
    copied = 0
    for name, subtree in classifier_params["params"].items():
        if not TRUNK_MODULES.fullmatch(name):
            continue
        if name not in stage:
            raise ValueError(f"the STN's similarity stage has no '{name}' (trunk depths differ)")
        ours, theirs = jax.tree.structure(subtree), jax.tree.structure(stage[name])
        shapes = jax.tree.map(lambda a, b: np.shape(a) == np.shape(b), subtree, stage[name])
        if ours != theirs or not all(jax.tree.leaves(shapes)):
            raise ValueError(f"'{name}' of the classifier and of the STN differ in shape")
        out["params"][name] = jax.tree.map(jnp.array, stage[name])  # copies, not shared buffers
        copied += 1
    if copied == 0:
        raise ValueError("no trunk module to copy from the STN")
    return out
