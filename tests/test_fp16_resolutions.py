"""`num_fp16_res` of the reference generator changes nothing in float32.

Generators trained with it (the official bicycle and tvmonitor ones used 4) rescale, in their
top resolutions, the style by its largest magnitude over the batch and each output channel's
weight by its largest magnitude before demodulating. Demodulation divides each output channel by
the norm of its modulated weight, so both factors cancel except against the 1e-8 epsilon under
the square root: the plain modulated convolution (ours) gives the same float32 images.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gangealing_jax.convert.__main__ import main as convert_main
from gangealing_jax.ops.conv import modulated_conv2d


def _torch_modulated_conv(x, weight, style, rescale):
    """The reference's demodulated 3x3 convolution, optionally with its fp16-resolution rescale.

    x (N, Cin, H, W); weight (Cout, Cin, k, k), unscaled; style (N, Cin).
    """
    n, cin = style.shape
    cout, _, k, _ = weight.shape
    style = style.view(n, 1, cin, 1, 1)
    w = weight[None] / (cin * k * k) ** 0.5
    if rescale:
        style = style / style.abs().max()
        amax = w.abs().amax(dim=(2, 3, 4), keepdim=True)
        w = w * (1.0 / (cin * k * k)) ** 0.5 / amax
    w = w * style
    w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4]) + 1e-8).view(n, cout, 1, 1, 1)
    out = F.conv2d(
        x.reshape(1, n * cin, *x.shape[2:]), w.reshape(n * cout, cin, k, k), padding=1, groups=n
    )
    return out.view(n, cout, *x.shape[2:])


def _case(seed, style_scale):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 16, 8, 8)).astype(np.float32)
    weight = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    # Styles as a trained StyleGAN2 has them (affine bias initialised at 1), or scaled down.
    style = (style_scale * (1.0 + 0.5 * rng.standard_normal((3, 16)))).astype(np.float32)
    return x, weight, style


def _outputs(x, weight, style):
    tx, tw, ts = (torch.tensor(a) for a in (x, weight, style))
    plain = _torch_modulated_conv(tx, tw, ts, rescale=False).numpy()
    rescaled = _torch_modulated_conv(tx, tw, ts, rescale=True).numpy()
    k = weight.shape[-1]
    ours = modulated_conv2d(
        jnp.asarray(np.transpose(x, (0, 2, 3, 1))),
        jnp.asarray(np.transpose(weight, (2, 3, 1, 0)) / np.sqrt(weight.shape[1] * k * k)),
        jnp.asarray(style),
    )
    return plain, rescaled, np.transpose(np.asarray(ours), (0, 3, 1, 2))


@pytest.mark.parametrize("seed", [0, 1])
def test_fp16_resolution_rescaling_cancels_in_float32(seed):
    plain, rescaled, ours = _outputs(*_case(seed, style_scale=1.0))
    scale = np.abs(plain).max()
    assert np.abs(rescaled - plain).max() <= 1e-6 * scale
    assert np.abs(ours - rescaled).max() <= 1e-5 * scale


def test_only_the_epsilon_tells_them_apart():
    """Modulated weights as small as the epsilon: there the two forms differ, so the check above
    can fail, and its agreement at ordinary magnitudes is the epsilon's doing alone."""
    plain, rescaled, _ = _outputs(*_case(2, style_scale=1e-5))
    assert np.abs(rescaled - plain).max() > 1e-2 * np.abs(rescaled).max()


def test_converter_accepts_the_flag(tmp_path):
    pytest.importorskip("torch")
    from tests.golden import golden_cases

    path = golden_cases("generator", ".pt")[0].values[0]
    assert convert_main([str(path), str(tmp_path / "g"), "--num-fp16-res", "4"]) == 0
    assert (tmp_path / "g" / "g_ema").is_dir()
