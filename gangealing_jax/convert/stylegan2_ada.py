"""NVIDIA stylegan2-ada-pytorch network pickles -> (config, Flax variables), torch layout -> NHWC.

Every size, gain, clamp, activation, architecture and FIR filter is read from the pickled modules
(their attributes and tensor shapes), never assumed: a snapshot needs no flags. The pickle itself
is read by convert/ada_pickle.py, which runs nothing from the file; convert/ada_snapshot.py loads
and converts whole snapshots.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from gangealing_jax.convert.ada_pickle import PersistentObject
from gangealing_jax.convert.state_dict import check_finite
from gangealing_jax.errors import CheckpointError
from gangealing_jax.models.ada_layers import ConvSpec, FCSpec, check_activation
from gangealing_jax.models.discriminator_ada import (
    AdaDiscriminatorConfig,
    DiscriminatorBlockSpec,
    EpilogueSpec,
    discriminator_init_shapes,
)
from gangealing_jax.models.stylegan2_ada import (
    AdaGeneratorConfig,
    MappingSpec,
    SynthesisBlockSpec,
    init_shapes,
)

_DEF_GAIN = {"linear": 1.0, "relu": math.sqrt(2.0), "lrelu": math.sqrt(2.0)}


class _Reader:
    """Reads one persistent object's fields, naming the module path in every error."""

    def __init__(self, obj, where: str, path: str):
        if not isinstance(obj, PersistentObject):
            raise CheckpointError(f"{path}: '{where}' is not a network module")
        self.obj, self.where, self.path = obj, where, path

    def fail(self, what: str):
        return CheckpointError(f"{self.path}: '{self.where}' {what}")

    def attr(self, name: str, default=...):
        if name not in self.obj.state:
            if default is ...:
                raise self.fail(f"({self.obj.class_name}) has no attribute '{name}'")
            return default
        return self.obj.state[name]

    def tensor(self, name: str):
        value = self.obj.tensor(name)
        if value is None:
            raise self.fail(f"({self.obj.class_name}) has no tensor '{name}'")
        return value

    def child(self, name: str):
        child = self.obj.modules.get(name)
        if child is None:
            return None
        return _Reader(child, f"{self.where}.{name}" if self.where else name, self.path)

    def need(self, name: str):
        child = self.child(name)
        if child is None:
            raise self.fail(f"has no sub-module '{name}'")
        return child

    def filter(self) -> tuple:
        f = np.asarray(self.tensor("resample_filter"), np.float32)
        if (
            f.ndim == 1
        ):  # NVIDIA keeps long separable filters 1-D; the same taps as an outer product
            f = np.outer(f, f)
        if f.ndim != 2 or f.shape[0] != f.shape[1]:
            raise self.fail(f"has a resample filter of shape {f.shape}; expected a square one")
        return tuple(tuple(float(v) for v in row) for row in f)

    def activation(self) -> str:
        name = str(self.attr("activation"))
        try:
            return check_activation(name)
        except ValueError as err:
            raise self.fail(str(err)) from None


def _clamp(value):
    return None if value is None else float(value)


def _fc(r: _Reader) -> FCSpec:
    out_features, in_features = r.tensor("weight").shape
    act = r.activation()
    return FCSpec(
        in_features=int(in_features),
        out_features=int(out_features),
        weight_gain=float(r.attr("weight_gain")),
        bias_gain=float(r.attr("bias_gain")),
        activation=act,
        act_gain=_DEF_GAIN[act],  # bias_act's default gain: FullyConnectedLayer passes none
        bias=r.obj.tensor("bias") is not None,
    )


def _conv(r: _Reader) -> ConvSpec:
    """Conv2dLayer."""
    out_ch, in_ch, k, _ = r.tensor("weight").shape
    up, down = int(r.attr("up")), int(r.attr("down"))
    return ConvSpec(
        in_channels=int(in_ch),
        out_channels=int(out_ch),
        kernel_size=int(k),
        up=up,
        down=down,
        padding=int(r.attr("padding")),
        weight_gain=float(r.attr("weight_gain")),
        act_gain=float(r.attr("act_gain")),
        activation=r.activation(),
        conv_clamp=_clamp(r.attr("conv_clamp", None)),
        bias=r.obj.tensor("bias") is not None,
        resample_filter=r.filter() if (up > 1 or down > 1) else (),
    )


def _synthesis_layer(r: _Reader) -> ConvSpec:
    out_ch, in_ch, k, _ = r.tensor("weight").shape
    up = int(r.attr("up"))
    return ConvSpec(
        in_channels=int(in_ch),
        out_channels=int(out_ch),
        kernel_size=int(k),
        up=up,
        padding=int(r.attr("padding")),
        act_gain=float(r.attr("act_gain")),
        activation=r.activation(),
        conv_clamp=_clamp(r.attr("conv_clamp", None)),
        resample_filter=r.filter() if up > 1 else (),
        affine=_fc(r.need("affine")),
        resolution=int(r.attr("resolution")),
        use_noise=bool(r.attr("use_noise")),
    )


def _torgb(r: _Reader) -> ConvSpec:
    out_ch, in_ch, k, _ = r.tensor("weight").shape
    return ConvSpec(
        in_channels=int(in_ch),
        out_channels=int(out_ch),
        kernel_size=int(k),
        weight_gain=float(r.attr("weight_gain")),
        conv_clamp=_clamp(r.attr("conv_clamp", None)),
        affine=_fc(r.need("affine")),
    )


def _mapping(r: _Reader) -> MappingSpec:
    num_layers = int(r.attr("num_layers"))
    num_ws = r.attr("num_ws", None)
    embed = r.child("embed")
    return MappingSpec(
        z_dim=int(r.attr("z_dim")),
        c_dim=int(r.attr("c_dim")),
        w_dim=int(r.attr("w_dim")),
        layers=tuple(_fc(r.need(f"fc{i}")) for i in range(num_layers)),
        embed=_fc(embed) if embed is not None else None,
        num_ws=0 if num_ws is None else int(num_ws),
    )


def _architecture(r: _Reader) -> str:
    arch = str(r.attr("architecture"))
    if arch not in ("orig", "skip", "resnet"):
        raise r.fail(f"has architecture {arch!r}; known: orig, skip, resnet")
    return arch


def _synthesis_block(r: _Reader) -> SynthesisBlockSpec:
    conv0, torgb, skip = r.child("conv0"), r.child("torgb"), r.child("skip")
    conv1 = _synthesis_layer(r.need("conv1"))
    return SynthesisBlockSpec(
        resolution=int(r.attr("resolution")),
        in_channels=int(r.attr("in_channels")),
        out_channels=conv1.out_channels,
        architecture=_architecture(r),
        is_last=bool(r.attr("is_last")),
        num_conv=int(r.attr("num_conv")),
        num_torgb=int(r.attr("num_torgb")),
        resample_filter=r.filter(),
        conv1=conv1,
        conv0=_synthesis_layer(conv0) if conv0 is not None else None,
        torgb=_torgb(torgb) if torgb is not None else None,
        skip=_conv(skip) if skip is not None else None,
    )


def generator_config(obj, path: str = "", where: str = "G_ema") -> AdaGeneratorConfig:
    r = _Reader(obj, where, path)
    if obj.class_name != "Generator":
        raise r.fail(f"is a {obj.class_name!r}, not a Generator")
    synthesis = r.need("synthesis")
    resolutions = [int(res) for res in synthesis.attr("block_resolutions")]
    return AdaGeneratorConfig(
        z_dim=int(r.attr("z_dim")),
        c_dim=int(r.attr("c_dim")),
        w_dim=int(r.attr("w_dim")),
        num_ws=int(r.attr("num_ws")),
        img_resolution=int(r.attr("img_resolution")),
        img_channels=int(r.attr("img_channels")),
        mapping=_mapping(r.need("mapping")),
        blocks=tuple(_synthesis_block(synthesis.need(f"b{res}")) for res in resolutions),
    )


def _discriminator_block(r: _Reader) -> DiscriminatorBlockSpec:
    fromrgb, skip = r.child("fromrgb"), r.child("skip")
    return DiscriminatorBlockSpec(
        resolution=int(r.attr("resolution")),
        in_channels=int(r.attr("in_channels")),
        architecture=_architecture(r),
        resample_filter=r.filter(),
        conv0=_conv(r.need("conv0")),
        conv1=_conv(r.need("conv1")),
        fromrgb=_conv(fromrgb) if fromrgb is not None else None,
        skip=_conv(skip) if skip is not None else None,
    )


def _epilogue(r: _Reader) -> EpilogueSpec:
    mbstd, fromrgb = r.child("mbstd"), r.child("fromrgb")
    group = mbstd.attr("group_size") if mbstd is not None else None
    return EpilogueSpec(
        architecture=_architecture(r),
        cmap_dim=int(r.attr("cmap_dim")),
        conv=_conv(r.need("conv")),
        fc=_fc(r.need("fc")),
        out=_fc(r.need("out")),
        mbstd_group_size=0 if group is None else int(group),
        mbstd_num_channels=int(mbstd.attr("num_channels")) if mbstd is not None else 0,
        fromrgb=_conv(fromrgb) if fromrgb is not None else None,
    )


def discriminator_config(obj, path: str = "", where: str = "D") -> AdaDiscriminatorConfig:
    r = _Reader(obj, where, path)
    if obj.class_name != "Discriminator":
        raise r.fail(f"is a {obj.class_name!r}, not a Discriminator")
    mapping = r.child("mapping")
    return AdaDiscriminatorConfig(
        c_dim=int(r.attr("c_dim")),
        img_resolution=int(r.attr("img_resolution")),
        img_channels=int(r.attr("img_channels")),
        blocks=tuple(
            _discriminator_block(r.need(f"b{res}")) for res in r.attr("block_resolutions")
        ),
        epilogue=_epilogue(r.need("b4")),
        mapping=_mapping(mapping) if mapping is not None else None,
    )


# --- tensors ------------------------------------------------------------------------------------


def state_dict(obj: PersistentObject, prefix: str = "") -> dict:
    """Every parameter and buffer of a persistent module tree, by its torch `state_dict()` key."""
    out = {}
    for name, value in {**obj.params, **obj.buffers}.items():
        if value is not None:
            out[prefix + name] = np.asarray(value)
    for name, child in obj.modules.items():
        if isinstance(child, PersistentObject):
            out.update(state_dict(child, f"{prefix}{name}."))
    return out


def _flax_leaf(key: str, value: np.ndarray, epilogue_fc_shape=None):
    """torch key and tensor -> (Flax path, NHWC/HWIO array), or None for the FIR filters."""
    *modules, leaf = key.split(".")
    if leaf == "resample_filter":
        return None  # static: part of the config
    if key == "mapping.w_avg" and len(modules) == 1:
        return ("buffers", "w_avg"), value
    if leaf == "noise_const":
        return ("buffers", *modules, leaf), value[None, :, :, None]
    if leaf == "const":
        return ("params", *modules, leaf), np.transpose(value, (1, 2, 0))[None]
    if leaf == "weight" and value.ndim == 4:
        return ("params", *modules, leaf), np.transpose(value, (2, 3, 1, 0))
    if leaf == "weight" and value.ndim == 2:
        if epilogue_fc_shape is not None and modules == ["b4", "fc"]:
            # NVIDIA flattens (N, C, H, W); we flatten NHWC, so reorder the input rows to (H, W, C).
            c, h, w = epilogue_fc_shape
            value = value.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(value.shape[0], -1)
        return ("params", *modules, leaf), value.T
    return ("params", *modules, leaf), value


def _fill(template, state: dict, path: str, where: str, epilogue_fc_shape=None) -> dict:
    expected = {
        tuple(k.key for k in kp): tuple(leaf.shape)
        for kp, leaf in jax.tree_util.tree_flatten_with_path(template)[0]
    }
    out, unused = {}, []
    for key, value in state.items():
        converted = _flax_leaf(key, value, epilogue_fc_shape)
        if converted is None:
            continue
        flax_path, array = converted
        if flax_path not in expected:
            unused.append(key)
            continue
        if tuple(array.shape) != expected[flax_path]:
            raise CheckpointError(
                f"{path}: '{where}.{key}' has shape {tuple(value.shape)}, which does not fit the "
                f"network its modules describe (expected {expected[flax_path]} after conversion)"
            )
        node = out
        for name in flax_path[:-1]:
            node = node.setdefault(name, {})
        node[flax_path[-1]] = np.array(array, np.float32, order="C")  # keeps 0-d arrays 0-d
        del expected[flax_path]
    if unused or expected:
        raise CheckpointError(
            f"{path}: '{where}' tensors {unused[:5]} have no place in the network its modules "
            f"describe, or it lacks {['.'.join(p[1:]) for p in list(expected)[:5]]}: the pickle "
            "is damaged or from an unsupported network"
        )
    return out


def generator_from_object(obj, path: str = "", where: str = "G_ema"):
    """(AdaGeneratorConfig, variables {'params', 'buffers'}) of a pickled Generator."""
    config = generator_config(obj, path, where)
    state = state_dict(obj)
    check_finite(state, f"{path} ({where})")
    return config, _fill(init_shapes(config), state, path, where)


def discriminator_from_object(obj, path: str = "", where: str = "D"):
    config = discriminator_config(obj, path, where)
    state = state_dict(obj)
    check_finite(state, f"{path} ({where})")
    channels = config.epilogue.conv.out_channels
    side = math.isqrt(config.epilogue.fc.in_features // channels)  # the epilogue's resolution
    shape = (channels, side, side)
    return config, _fill(discriminator_init_shapes(config), state, path, where, shape)
