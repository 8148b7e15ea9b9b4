"""Import VGG16 / LPIPS / SimCLR-VGG weights from torch state dicts into a perceptual-loss bundle.

Accepted sources (`.pt`/`.pth` read with torch, weights only; or `.npz` with the same keys):
- torchvision VGG16 ImageNet state dict: `features.<i>.weight/bias` (classifier keys ignored);
- GANgealing SimCLR VGG checkpoint (`simclr_vgg_phase150.pt`): the same trunk as torchvision's
  `vgg16().features` state dict, i.e. bare `<i>.weight/bias` keys;
- LPIPS v0.1 heads (`weights/v0.1/vgg.pth`): `lin<k>.model.1.weight`, (1, C, 1, 1);
- a full LPIPS module state dict: `net.slice<s>.<i>.*`, `lin<k>.*`, `lins.<k>.*` (the same heads
  registered twice) and `scaling_layer.shift/scale`.

Output: one `.npz` with flat keys (`gangealing_jax.losses.perceptual.bundle_to_flat`) for
`config.loss.weights`:

  python -m gangealing_jax.convert.perceptual --vgg vgg16-397923af.pth --lpips-heads vgg.pth \
      --out lpips_vgg.npz
  python -m gangealing_jax.convert.perceptual --simclr simclr_vgg_phase150.pt --out vgg_ssl.npz
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping

import numpy as np

from gangealing_jax.convert.state_dict import (
    CheckpointError,
    check_finite,
    conv_weight_to_hwio,
    read_checkpoint,
)
from gangealing_jax.errors import ConfigError, entry_point
from gangealing_jax.losses.perceptual import (
    LPIPS_SCALE,
    LPIPS_SHIFT,
    PerceptualWeights,
    bundle_from_flat,
    bundle_to_flat,
)
from gangealing_jax.models.vgg import VGGFeatures, conv_name

NUM_TAPS = len(VGGFeatures._fields)
_SEQUENTIAL_KEY = re.compile(r"^(\d+)\.(weight|bias)$")
_SLICE_KEY = re.compile(r"^net\.slice(\d+)\.(\d+)\.(weight|bias)$")
_HEAD_KEY = re.compile(r"^(?:lin(\d+)|lins\.(\d+))\.model\.1\.weight$")


def _strip_wrappers(state: Mapping[str, np.ndarray]) -> dict:
    """Drop a shared nesting prefix ('state_dict/', 'model/') and DataParallel's 'module.'."""
    state = dict(state)
    if state and all("/" in k for k in state) and len({k.split("/", 1)[0] for k in state}) == 1:
        state = {k.split("/", 1)[1]: v for k, v in state.items()}
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def _conv_params(kernel: np.ndarray, bias: np.ndarray, where: str) -> dict:
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 4 or kernel.shape[2:] != (3, 3):
        raise CheckpointError(
            f"{where}: expected a (out, in, 3, 3) conv weight, got {kernel.shape}"
        )
    return {"kernel": conv_weight_to_hwio(kernel), "bias": np.asarray(bias, np.float32)}


def vgg_params_from_features(state: Mapping[str, np.ndarray], source: str = "state dict") -> dict:
    """Flax `VGG16` params from a torchvision `vgg16()` state dict or its bare `features` dict.

    In `features`, conv i is followed by a ReLU (i + 1) and, at a stage end, a max pool (i + 2),
    so consecutive convs of one stage are 2 indices apart and the first of the next stage is 3.
    """
    state = _strip_wrappers(state)
    if any(k.startswith("features.") for k in state):
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    if any("running_mean" in k for k in state):
        raise CheckpointError(f"{source}: batch-norm VGG (vgg16_bn) is not supported; use vgg16")
    found: dict[int, dict] = {}
    for key, value in state.items():
        match = _SEQUENTIAL_KEY.match(key)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if not found:
        raise CheckpointError(
            f"{source}: no VGG conv weights (features.<i>.weight or <i>.weight) among "
            f"{sorted(state)[:6]}"
        )
    params: dict = {}
    stage, index, previous = 0, 0, None
    for i in sorted(found):
        if previous is not None:
            gap = i - previous
            if gap == 3:
                stage, index = stage + 1, 0
            elif gap != 2:
                raise CheckpointError(f"{source}: conv indices {sorted(found)} are not VGG16's")
        if stage >= NUM_TAPS:  # convs past relu5_3 are unused
            break
        if set(found[i]) != {"weight", "bias"}:
            raise CheckpointError(f"{source}: conv {i} lacks a weight or bias")
        params[conv_name(stage, index)] = _conv_params(
            found[i]["weight"], found[i]["bias"], f"{source} conv {i}"
        )
        previous, index = i, index + 1
    if stage + 1 < NUM_TAPS:
        raise CheckpointError(f"{source}: only {stage + 1} VGG stages found, need {NUM_TAPS}")
    return params


def vgg_params_from_lpips_module(state: Mapping[str, np.ndarray], source: str = "state dict"):
    """Flax `VGG16` params from an LPIPS module state dict (`net.slice<s>.<i>.*`)."""
    by_slice: dict[int, dict[int, dict]] = {}
    for key, value in _strip_wrappers(state).items():
        match = _SLICE_KEY.match(key)
        if match:
            s, i, leaf = int(match.group(1)), int(match.group(2)), match.group(3)
            by_slice.setdefault(s, {}).setdefault(i, {})[leaf] = value
    if sorted(by_slice) != list(range(1, NUM_TAPS + 1)):
        raise CheckpointError(
            f"{source}: expected net.slice1..{NUM_TAPS}, found {sorted(by_slice)}"
        )
    params = {}
    for s in sorted(by_slice):
        for index, i in enumerate(sorted(by_slice[s])):
            conv = by_slice[s][i]
            params[conv_name(s - 1, index)] = _conv_params(
                conv.get("weight"), conv.get("bias"), f"{source} net.slice{s}.{i}"
            )
    return params


def lpips_heads_from_state(state: Mapping[str, np.ndarray], source: str = "state dict"):
    """The five LPIPS heads as (C,) vectors; `lin<k>` and `lins.<k>` copies must agree."""
    heads: dict[int, np.ndarray] = {}
    for key, value in _strip_wrappers(state).items():
        match = _HEAD_KEY.match(key)
        if not match:
            continue
        k = int(match.group(1) or match.group(2))
        vector = np.asarray(value, np.float32).reshape(-1)  # (1, C, 1, 1) -> (C,)
        if k in heads and not np.array_equal(heads[k], vector):
            raise CheckpointError(f"{source}: lin{k} and lins.{k} hold different weights")
        heads[k] = vector
    if sorted(heads) != list(range(NUM_TAPS)):
        raise CheckpointError(
            f"{source}: expected LPIPS heads lin0..lin{NUM_TAPS - 1}.model.1.weight, "
            f"found {sorted(heads)}"
        )
    return tuple(heads[k] for k in range(NUM_TAPS))


def scaling_from_state(state: Mapping[str, np.ndarray]):
    """(shift, scale) from `scaling_layer.*` when present, else the LPIPS v0.1 constants."""
    state = _strip_wrappers(state)
    shift = state.get("scaling_layer.shift", np.float32(LPIPS_SHIFT))
    scale = state.get("scaling_layer.scale", np.float32(LPIPS_SCALE))
    return np.asarray(shift, np.float32).reshape(3), np.asarray(scale, np.float32).reshape(3)


def weights_from_state(
    trunk: Mapping[str, np.ndarray], heads: Mapping[str, np.ndarray] | None = None
) -> PerceptualWeights:
    """Bundle from a trunk state dict (torchvision, SimCLR or full LPIPS) and optional heads.

    A full LPIPS state dict also supplies its own heads and scaling when `heads` is None.
    """
    is_lpips_module = any(_SLICE_KEY.match(k) for k in _strip_wrappers(trunk))
    if is_lpips_module:
        vgg = vgg_params_from_lpips_module(trunk, "LPIPS state dict")
    else:
        vgg = vgg_params_from_features(trunk, "VGG state dict")
    head_source = heads if heads is not None else (trunk if is_lpips_module else None)
    lins = None if head_source is None else lpips_heads_from_state(head_source, "LPIPS heads")
    shift, scale = scaling_from_state(trunk)
    for k, conv in enumerate(_last_convs(vgg)):
        if lins is not None and lins[k].shape[0] != conv["kernel"].shape[-1]:
            raise CheckpointError(
                f"LPIPS head {k} has {lins[k].shape[0]} channels, VGG tap {k} has "
                f"{conv['kernel'].shape[-1]}"
            )
    return PerceptualWeights(vgg, lins, shift, scale)


def _last_convs(vgg: Mapping[str, dict]):
    for stage in range(NUM_TAPS):
        index = 0
        while conv_name(stage, index + 1) in vgg:
            index += 1
        yield vgg[conv_name(stage, index)]


def read_state_dict(path: str | os.PathLike) -> dict:
    """A torch state dict (`.pt`/`.pth`, weights only) or `.npz` with the same keys, as numpy."""
    flat = read_checkpoint(path)
    check_finite(flat, os.fspath(path))
    return flat


def save_perceptual_weights(weights: PerceptualWeights, path: str | os.PathLike) -> str:
    """Write the bundle as one `.npz`; returns the path written."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    np.savez(path, **bundle_to_flat(weights))
    return path if path.endswith(".npz") else path + ".npz"


def convert(
    out: str,
    vgg: str | None = None,
    simclr: str | None = None,
    lpips_module: str | None = None,
    lpips_heads: str | None = None,
) -> str:
    """Read one trunk source (plus optional heads), write the bundle to `out`."""
    if simclr and vgg:
        # The SimCLR checkpoint holds the whole trunk, so it replaces the ImageNet one.
        print(f"note: --vgg {vgg} is not used; the trunk comes from --simclr {simclr}")
        vgg = None
    sources = [p for p in (vgg, simclr, lpips_module) if p]
    if len(sources) != 1:
        raise ConfigError("give exactly one trunk: --vgg, --simclr or --lpips-module")
    heads = read_state_dict(lpips_heads) if lpips_heads else None
    weights = weights_from_state(read_state_dict(sources[0]), heads)
    written = save_perceptual_weights(weights, out)
    with np.load(written) as data:  # re-read to fail here, not at training time
        bundle_from_flat({k: data[k] for k in data.files})
    return written


@entry_point
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gangealing_jax.convert.perceptual",
        description="Convert VGG16 / LPIPS / SimCLR-VGG torch weights to a perceptual-loss .npz.",
    )
    parser.add_argument("--vgg", help="torchvision VGG16 state dict (vgg16-397923af.pth)")
    parser.add_argument("--simclr", help="GANgealing SimCLR VGG (simclr_vgg_phase150.pt)")
    parser.add_argument("--lpips-module", help="full LPIPS module state dict (net.slice*, lin*)")
    parser.add_argument(
        "--lpips-heads", help="LPIPS v0.1 heads (lpips package weights/v0.1/vgg.pth)"
    )
    parser.add_argument("--out", required=True, help="output .npz, the value of loss.weights")
    args = parser.parse_args(argv)
    written = convert(args.out, args.vgg, args.simclr, args.lpips_module, args.lpips_heads)
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
