"""Reference spatial-transformer weights (torch state dict) -> Flax variables of `models.stn.STN`.

The architecture is read from the tensor shapes: which stages (`warp_head.linear` = similarity,
`warp_head.flow_out` = flow), num_heads, flow_downsample, the channel table, flow_size (from the
similarity trunk's depth) and supersize (from the input downsampler's filter length). A state dict
of a single SpatialTransformer (no `stns.<i>.` prefix) becomes a one-stage STN. A flow-only STN
does not record its flow_size: pass it.

Fixed buffers (FIR kernels, `one_hot`, the mipmap blur filter, the input downsampler's filters)
are not parameters here; they are checked against the values the model uses.
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
    linear_weight_to_io,
    module_state,
    read_checkpoint,
    take,
)
from gangealing_jax.models.stn import STN, STNConfig, trunk_plan
from gangealing_jax.ops.mipmap import blur_filter, tent_kernel
from gangealing_jax.ops.upfirdn2d import make_kernel

_IGNORED = ("warp_head.rebias",)  # the reference's own loader drops it too


def _where(path: str) -> str:
    return path or "checkpoint"


def _split_stages(state) -> list[tuple[str, dict]]:
    """[(torch key prefix, sub-state)] per stage, in order."""
    if not any(k.startswith("stns.") for k in state):
        return [("", dict(state))]
    indices = sorted({int(m.group(1)) for k in state if (m := re.match(r"stns\.(\d+)\.", k))})
    stages = []
    for i in indices:
        head = f"stns.{i}."
        stages.append((head, {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}))
    if indices != list(range(len(indices))):
        raise CheckpointError(f"stage indices {indices} are not 0..{len(indices) - 1}")
    return stages


def _num_blocks(stage) -> int:
    return len({m.group(1) for k in stage if (m := re.match(r"convs\.(\d+)\.conv1\.", k))})


def _stage_transform(stage, prefix, path) -> str:
    if "warp_head.linear.weight" in stage:
        return "similarity"
    if "warp_head.flow_out.2.weight" in stage:
        return "flow"
    raise CheckpointError(
        f"{_where(path)}: '{prefix}' is not an STN stage (no 'warp_head.linear.weight' or "
        "'warp_head.flow_out.2.weight')"
    )


def stn_config_from_state(state, path: str = "", flow_size: int | None = None) -> STNConfig:
    stages = _split_stages(state)
    transforms = [_stage_transform(s, p, path) for p, s in stages]
    heads, flow_downsample, inferred_size = set(), 8, None
    for (prefix, stage), transform in zip(stages, transforms, strict=True):
        if transform == "similarity":
            heads.add(take(state, prefix + "warp_head.linear.weight", path=path).shape[0] // 4)
            inferred_size = 2 ** (_num_blocks(stage) + 2)
        else:
            k = take(state, prefix + "warp_head.flow_out.2.weight", path=path).shape[0] // 2
            heads.add(k)
            mask_channels = take(state, prefix + "warp_head.mask_out.2.weight", path=path).shape[0]
            flow_downsample = round(math.sqrt(mask_channels / (9 * k)))
            if flow_downsample**2 * 9 * k != mask_channels:
                raise CheckpointError(
                    f"{_where(path)}: '{prefix}warp_head.mask_out.2.weight' does not hold "
                    f"9 * f * f * num_heads output channels"
                )
    if len(heads) != 1:
        raise CheckpointError(f"{_where(path)}: stages disagree on num_heads ({sorted(heads)})")
    if inferred_size is None and flow_size is None:
        raise CheckpointError(
            f"{_where(path)}: a flow-only STN does not record its flow_size; pass flow_size="
        )
    if flow_size is not None and inferred_size is not None and flow_size != inferred_size:
        raise CheckpointError(
            f"{_where(path)}: the similarity trunk is built for flow_size {inferred_size}, "
            f"not {flow_size}"
        )
    size = flow_size or inferred_size
    factors = {
        take(s, "input_downsample.kernel_horz", path=path).shape[-1] // 2
        for _, s in stages
        if "input_downsample.kernel_horz" in s
    }
    if len(factors) > 1:
        raise CheckpointError(f"{_where(path)}: stages disagree on the input downsampling factor")
    supersize = size * (factors.pop() if factors else 1)

    table: dict[int, int] = {}

    def record(res, value, key):
        if table.setdefault(res, value) != value:
            raise CheckpointError(
                f"{_where(path)}: '{key}' has {value} channels, but resolution {res} already has "
                f"{table[res]}"
            )

    log_size = int(math.log2(size))
    for prefix, stage in stages:
        record(
            size, take(state, prefix + "convs.0.0.weight", path=path).shape[0], prefix + "convs.0.0"
        )
        for j in range(1, _num_blocks(stage) + 1):
            # A downsampling ConvLayer holds (Blur, conv, act), a plain one (conv, act).
            key = f"convs.{j}.conv2.1.weight"
            if key not in stage:
                key = f"convs.{j}.conv2.0.weight"
            record(2 ** (log_size - j), take(state, prefix + key, path=path).shape[0], prefix + key)
        record(
            4,
            take(state, prefix + "final_conv.0.weight", path=path).shape[0],
            prefix + "final_conv",
        )
    return STNConfig(
        transforms=tuple(transforms),
        flow_size=size,
        supersize=supersize,
        channels=tuple(sorted(table.items())),
        num_heads=heads.pop(),
        flow_downsample=flow_downsample,
    )


def _stage_key(config: STNConfig, transform: str, names: tuple[str, ...]):
    """Flax path inside one stage -> (torch key inside the stage, layout)."""
    head, *rest = names
    rest = tuple(rest)
    if head == "convs_0":
        return conv_layer_key("convs.0", rest, False)
    if m := re.fullmatch(r"convs_(\d+)", head):
        j = int(m.group(1))
        downsample = trunk_plan(config, transform).blocks[j - 1][1]
        sub, *leaf = rest
        return conv_layer_key(f"convs.{j}.{sub}", tuple(leaf), downsample and sub != "conv1")
    if head == "final_conv":
        return conv_layer_key("final_conv", rest, False)
    if head == "final_linear":
        return f"final_linear.{rest[0]}", "flat_linear" if rest[0] == "weight" else "plain"
    if head == "warp_head":
        module, leaf = rest
        if module == "linear":
            return f"warp_head.linear.{'weight' if leaf == 'kernel' else leaf}", (
                "linear" if leaf == "kernel" else "plain"
            )
        torch_module = re.sub(r"_(\d+)$", r".\1", module)
        return f"warp_head.{torch_module}.{leaf}", "conv" if leaf == "weight" else "plain"
    raise KeyError(names)


def _from_torch(value: np.ndarray, layout: str, shape) -> np.ndarray:
    if layout == "conv":
        value = conv_weight_to_hwio(value)
    elif layout == "linear":
        value = linear_weight_to_io(value)
    elif layout == "flat_linear":
        # torch flattens (C, 4, 4) features; the model flattens (4, 4, C).
        out_dim = value.shape[0]
        channels = shape[0] // 16 if len(shape) == 2 else 0
        if value.size != shape[0] * shape[1] or channels * 16 != shape[0]:
            return value
        value = value.reshape(out_dim, channels, 4, 4).transpose(2, 3, 1, 0).reshape(shape)
    return np.ascontiguousarray(value, dtype=np.float32)


def _check_buffers(stage, prefix, config: STNConfig, path: str) -> set[str]:
    """Compare fixed buffers with the model's constants; returns the keys checked."""
    checked = set()

    def check(key, expected):
        value = np.asarray(stage[key], np.float32)
        expected = np.broadcast_to(np.asarray(expected, np.float32), value.shape)
        if not np.allclose(value, expected, atol=1e-6):
            raise CheckpointError(
                f"{_where(path)}: buffer '{prefix}{key}' differs from the value the model uses"
            )
        checked.add(key)

    fir = make_kernel(config.blur_kernel)
    factor = config.supersize // config.flow_size
    for key in stage:
        if key.endswith(".kernel") and key.startswith("convs."):
            check(key, fir)
        elif key == "warp_head.one_hot":
            check(key, [0.0, 0.0, 1.0])
        elif key == "warp_head.warper.blur_filter":
            check(key, blur_filter())
        elif key == "input_downsample.kernel_horz":
            check(key, tent_kernel(factor)[None, None, None, :])
        elif key == "input_downsample.kernel_vert":
            check(key, tent_kernel(factor)[None, None, :, None])
        elif key in _IGNORED:
            checked.add(key)
    return checked


def stn_variables_from_state(state, path: str = "", flow_size: int | None = None):
    """(STNConfig, variables {'params': ...}) from a torch-layout STN state dict."""
    config = stn_config_from_state(state, path, flow_size)
    stages = _split_stages(state)
    in_channels = take(state, stages[0][0] + "convs.0.0.weight", path=path).shape[1]
    dummy = jnp.zeros((1, config.flow_size, config.flow_size, in_channels))
    # Shapes only (nothing is drawn): eval_shape never runs the initialisers.
    template = jax.eval_shape(lambda: STN(config).init(jax.random.key(0), dummy))
    params: dict = {}
    used: list[set] = [set() for _ in stages]
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(template["params"])[0]:
        names = tuple(k.key for k in key_path)
        index = int(names[0].rsplit("_", 1)[1])
        prefix, stage = stages[index]
        torch_key, layout = _stage_key(config, config.transforms[index], names[1:])
        value = _from_torch(take(state, prefix + torch_key, path=path), layout, leaf.shape)
        if value.shape != tuple(leaf.shape):
            raise CheckpointError(
                f"{_where(path)}: key '{prefix}{torch_key}' has shape "
                f"{tuple(np.shape(stage[torch_key]))}, which does not fit the inferred "
                f"architecture (expected {tuple(leaf.shape)} after conversion)"
            )
        used[index].add(torch_key)
        node = params
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = value
    for (prefix, stage), weights in zip(stages, used, strict=True):
        unknown = sorted(set(stage) - weights - _check_buffers(stage, prefix, config, path))
        if unknown:
            raise CheckpointError(
                f"{_where(path)}: unexpected STN keys {[prefix + k for k in unknown[:5]]}"
            )
    return config, {"params": params}


def stn_config_to_dict(config: STNConfig) -> dict:
    d = dataclasses.asdict(config)
    d["transforms"] = list(config.transforms)
    d["channels"] = [list(pair) for pair in config.channels]
    d["blur_kernel"] = list(config.blur_kernel)
    return d


def stn_config_from_dict(d: dict) -> STNConfig:
    d = dict(d)
    d["transforms"] = tuple(d["transforms"])
    d["channels"] = tuple(tuple(pair) for pair in d["channels"])
    d["blur_kernel"] = tuple(d["blur_kernel"])
    return STNConfig(**d)


def load_stn(path: str | os.PathLike, module: str = "t_ema", flow_size: int | None = None):
    """(STNConfig, variables) from a `.pt`/`.npz` checkpoint or a converted bundle directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not is_bundle(path):
            path = os.path.join(path, module)  # a converted checkpoint holds one bundle per module
        config, variables = load_bundle(path, kind="stn")
        return stn_config_from_dict(config), variables
    state = module_state(read_checkpoint(path), module, path)
    return stn_variables_from_state(state, path, flow_size)
