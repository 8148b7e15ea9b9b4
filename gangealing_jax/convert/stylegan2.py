"""Reference StyleGAN2 weights (rosinality / GANgealing layout, torch) -> Flax variables.

Architecture sizes are read from the tensor shapes; `lr_mlp` is not stored in checkpoints and
defaults to the reference's 0.01.
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax.convert import ada_snapshot
from gangealing_jax.convert.ada_pickle import is_network_pickle
from gangealing_jax.convert.bundle import (
    bundle_kind,
    is_bundle,
    is_packed_bundle,
    load_bundle,
    unpack_bundle,
)
from gangealing_jax.convert.state_dict import (
    CheckpointError,
    conv_layer_key,
    conv_weight_to_hwio,
    linear_weight_to_io,
    module_state,
    read_checkpoint,
    take,
)
from gangealing_jax.models.discriminator import Discriminator, DiscriminatorConfig
from gangealing_jax.models.stylegan2 import Generator, GeneratorConfig
from gangealing_jax.ops.upfirdn2d import make_kernel

_NCHW_TO_NHWC = (0, 2, 3, 1)


def _count(state, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.fullmatch(k))})


def _mapping_layers(state, path: str) -> int:
    """n_mlp: the mapping network's layers style.1 .. style.n_mlp (style.0 is its PixelNorm),
    each with a weight and a bias. Any other style.* key means the network has layers that the
    numbering does not explain, which is reported as such rather than as a missing key."""
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in state and f"style.{n_mlp + 1}.bias" in state:
        n_mlp += 1
    known = {f"style.{i}.{leaf}" for i in range(1, n_mlp + 1) for leaf in ("weight", "bias")}
    surplus = sorted(k for k in state if k.startswith("style.") and k not in known)
    if surplus and n_mlp:
        raise CheckpointError(
            f"{path or 'checkpoint'}: unexpected mapping-network keys {surplus[:5]}: the other "
            f"keys describe n_mlp={n_mlp} layers (style.1 .. style.{n_mlp}, each a weight and a "
            "bias), so these imply a deeper mapping network than the checkpoint holds. The state "
            "dict is damaged or edited: re-export it from the model it came from"
        )
    return n_mlp


def generator_config_from_state(state, path: str = "", lr_mlp: float = 0.01) -> GeneratorConfig:
    n_mlp = _mapping_layers(state, path)
    if n_mlp == 0 or "input.input" not in state:
        raise CheckpointError(
            f"{path or 'checkpoint'}: not a StyleGAN2 generator state dict "
            "(missing 'style.1.weight' / 'input.input')"
        )
    style_dim = take(state, "style.1.weight", path=path).shape[0]
    num_blocks = _count(state, r"to_rgbs\.(\d+)\.conv\.weight")
    channels = [take(state, "input.input", path=path).shape[1]]
    channels += [
        take(state, f"convs.{2 * j}.conv.weight", path=path).shape[1] for j in range(num_blocks)
    ]
    return GeneratorConfig(
        size=2 ** (num_blocks + 2),
        style_dim=style_dim,
        n_mlp=n_mlp,
        channels=tuple(channels),
        lr_mlp=lr_mlp,
    )


def _torch_key_and_layout(flax_path: tuple[str, ...]):
    """Flax variable path -> (torch key, layout) for the generator."""
    collection, *rest = flax_path
    if collection == "buffers":
        return f"noises.{rest[0]}", "nchw"
    head = rest[0]
    if head == "const":
        return "input.input", "nchw"
    if m := re.fullmatch(r"style_(\d+)", head):
        return f"style.{int(m.group(1)) + 1}.{rest[1]}", "linear" if rest[
            1
        ] == "weight" else "plain"
    module = re.sub(r"_(\d+)$", r".\1", head)
    inner = {
        ("conv", "weight"): ("conv.weight", "conv"),
        ("conv", "modulation", "weight"): ("conv.modulation.weight", "linear"),
        ("conv", "modulation", "bias"): ("conv.modulation.bias", "plain"),
        ("noise_strength",): ("noise.weight", "plain"),
        ("activate", "bias"): ("activate.bias", "plain"),
        ("bias",): ("bias", "flat"),
    }[tuple(rest[1:])]
    return f"{module}.{inner[0]}", inner[1]


def _from_torch(value: np.ndarray, layout: str, shape) -> np.ndarray:
    if layout == "conv":
        value = conv_weight_to_hwio(value)
    elif layout == "linear":
        value = linear_weight_to_io(value)
    elif layout == "nchw":
        value = np.transpose(value, _NCHW_TO_NHWC)
    elif layout == "flat":
        value = value.reshape(shape)
    return np.ascontiguousarray(value, dtype=np.float32)


def _torch_shape(shape, layout: str):
    if layout == "conv":
        kh, kw, cin, cout = shape
        return None, (cout, cin, kh, kw)  # modulated convs carry a leading 1; checked below
    if layout == "linear":
        return None, (shape[1], shape[0])
    if layout == "nchw":
        return None, (shape[0], shape[3], shape[1], shape[2])
    return None, None


def _check_fir_kernels(state, path, taps):
    for key, value in state.items():
        if key.endswith(("blur.kernel", "upsample.kernel")) or re.search(r"\.\d+\.kernel$", key):
            base = make_kernel(taps)
            if not (np.allclose(value, base) or np.allclose(value, base * 4)):
                raise CheckpointError(
                    f"{path or 'checkpoint'}: FIR kernel '{key}' is not make_kernel({list(taps)})"
                )


def _fill(template, state, path, key_fn):
    """Fill a variables template (shape tree) from a torch state dict, checking every key/shape."""
    flat = jax.tree_util.tree_flatten_with_path(template)[0]
    used = set()
    leaves = {}
    for key_path, leaf in flat:
        names = tuple(k.key for k in key_path)
        torch_key, layout = key_fn(names)
        value = take(state, torch_key, path=path)
        if layout == "conv" and value.ndim == 5:
            value = value[0]
        _, expected = _torch_shape(leaf.shape, layout)
        if expected is not None and tuple(value.shape) != expected:
            raise CheckpointError(
                f"{path or 'checkpoint'}: key '{torch_key}' has shape {tuple(value.shape)}, "
                f"expected {expected}"
            )
        converted = _from_torch(value, layout, leaf.shape)
        if converted.shape != tuple(leaf.shape):
            raise CheckpointError(
                f"{path or 'checkpoint'}: key '{torch_key}' has {value.size} values, "
                f"expected shape {tuple(leaf.shape)}"
            )
        used.add(torch_key)
        leaves[names] = converted
    out = {}
    for names, value in leaves.items():
        node = out
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = value
    return out, used


def generator_variables_from_state(state, path: str = "", lr_mlp: float = 0.01):
    """(GeneratorConfig, variables {'params', 'buffers'}) from a torch-layout generator state dict."""
    config = generator_config_from_state(state, path, lr_mlp)
    _check_fir_kernels(state, path, config.blur_kernel)
    template = jax.eval_shape(
        lambda: Generator(config).init(
            jax.random.PRNGKey(0), jnp.zeros((1, config.style_dim)), noise_mode="const"
        )
    )
    variables, used = _fill(template, state, path, _torch_key_and_layout)
    unknown = [k for k in state if k not in used and not k.endswith("kernel")]
    if unknown:
        raise CheckpointError(f"{path or 'checkpoint'}: unexpected generator keys {unknown[:5]}")
    return config, variables


# --- discriminator ----------------------------------------------------------------------------


def discriminator_config_from_state(state, path: str = "") -> DiscriminatorConfig:
    if "convs.0.0.weight" not in state or "final_linear.1.weight" not in state:
        raise CheckpointError(
            f"{path or 'checkpoint'}: not a StyleGAN2 discriminator state dict "
            "(missing 'convs.0.0.weight' / 'final_linear.1.weight')"
        )
    num_res = _count(state, r"convs\.(\d+)\.conv1\.0\.weight")
    chans = [take(state, "final_conv.0.weight", path=path).shape[0]]
    for i in range(num_res - 1, 0, -1):  # ResBlock i outputs resolution size / 2**i
        chans.append(take(state, f"convs.{i}.conv2.1.weight", path=path).shape[0])
    chans.append(take(state, "convs.0.0.weight", path=path).shape[0])
    return DiscriminatorConfig(size=2 ** (num_res + 2), channels=tuple(chans))


def _discriminator_key(flax_path: tuple[str, ...]):
    _, head, *rest = flax_path
    if head == "convs_0":
        return conv_layer_key("convs.0", tuple(rest), False)
    if m := re.fullmatch(r"convs_(\d+)", head):
        sub, *leaf = rest
        return conv_layer_key(f"convs.{m.group(1)}.{sub}", tuple(leaf), sub != "conv1")
    if head == "final_conv":
        return conv_layer_key("final_conv", tuple(rest), False)
    if m := re.fullmatch(r"final_linear_(\d+)", head):
        return f"final_linear.{m.group(1)}.{rest[0]}", "linear" if rest[0] == "weight" else "plain"
    raise KeyError(flax_path)


def discriminator_variables_from_state(state, path: str = ""):
    config = discriminator_config_from_state(state, path)
    _check_fir_kernels(state, path, config.blur_kernel)
    template = jax.eval_shape(
        lambda: Discriminator(config).init(
            jax.random.PRNGKey(0), jnp.zeros((1, config.size, config.size, 3))
        )
    )
    variables, used = _fill(template, state, path, _discriminator_key)
    unknown = [k for k in state if k not in used and not k.endswith("kernel")]
    if unknown:
        raise CheckpointError(
            f"{path or 'checkpoint'}: unexpected discriminator keys {unknown[:5]} (a "
            f"{config.size}px discriminator, read from convs.* and final_*, has no use for them)"
        )
    return config, variables


# --- entry points -----------------------------------------------------------------------------


def load_generator(path: str | os.PathLike, module: str = "g_ema", lr_mlp: float = 0.01):
    """(GeneratorConfig, variables) from a `.pt`/`.npz` checkpoint, a converted bundle dir or a
    packed bundle (`.npz` written by `pack_bundle`).

    An NVIDIA network pickle (`.pkl`) or its converted bundle gives (AdaGeneratorConfig,
    variables) instead (models/stylegan2_ada.make_generator builds the module for either);
    `lr_mlp` is then read from the pickle.
    """
    path = os.fspath(path)
    if is_network_pickle(path):
        return ada_snapshot.load_ada_generator(path, module)
    if is_packed_bundle(path):
        config, variables, _ = unpack_bundle(path, kind="generator")
        return generator_config_from_dict(config), variables
    if os.path.isdir(path):
        if not is_bundle(path):
            # A converted checkpoint directory holds one bundle per module.
            path = os.path.join(path, module)
        if bundle_kind(path) == ada_snapshot.ADA_GENERATOR_KIND:
            config, variables = load_bundle(path, kind=ada_snapshot.ADA_GENERATOR_KIND)
            return ada_snapshot.generator_config_from_dict(config), variables
        config, variables = load_bundle(path, kind="generator")
        return generator_config_from_dict(config), variables
    state = module_state(read_checkpoint(path), module, path)
    return generator_variables_from_state(state, path, lr_mlp)


def load_discriminator(path: str | os.PathLike, module: str = "d"):
    path = os.fspath(path)
    if os.path.isdir(path):
        if not is_bundle(path):
            path = os.path.join(path, module)
        config, variables = load_bundle(path, kind="discriminator")
        return discriminator_config_from_dict(config), variables
    state = module_state(read_checkpoint(path), module, path)
    return discriminator_variables_from_state(state, path)


def generator_config_from_dict(d: dict) -> GeneratorConfig:
    d = dict(d)
    d["channels"] = tuple(d["channels"])
    d["blur_kernel"] = tuple(d["blur_kernel"])
    return GeneratorConfig(**d)


def discriminator_config_from_dict(d: dict) -> DiscriminatorConfig:
    d = dict(d)
    d["channels"] = tuple(d["channels"])
    d["blur_kernel"] = tuple(d["blur_kernel"])
    return DiscriminatorConfig(**d)


def config_to_dict(config) -> dict:
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
