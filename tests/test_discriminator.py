"""Discriminator: converter round trip from a torch-layout state dict, and minibatch stddev."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.convert.state_dict import CheckpointError
from gangealing_jax.convert.stylegan2 import discriminator_variables_from_state
from gangealing_jax.models.discriminator import (
    Discriminator,
    DiscriminatorConfig,
    minibatch_stddev,
)
from gangealing_jax.ops.upfirdn2d import make_kernel


def _torch_layout_state(config: DiscriminatorConfig, seed: int = 0) -> dict:
    """A random state dict with the reference discriminator's keys and torch shapes."""
    rng = np.random.default_rng(seed)
    chans = config.channels
    state = {}

    def conv_layer(prefix, cin, cout, k, downsample, bias=True, activate=True):
        base = 1 if downsample else 0
        if downsample:
            state[f"{prefix}.0.kernel"] = make_kernel(config.blur_kernel)
        state[f"{prefix}.{base}.weight"] = rng.normal(size=(cout, cin, k, k)).astype(np.float32)
        if activate and bias:
            state[f"{prefix}.{base + 1}.bias"] = rng.normal(size=(cout,)).astype(np.float32)

    conv_layer("convs.0", 3, chans[-1], 1, False)
    cin = chans[-1]
    for i, idx in enumerate(range(len(chans) - 2, -1, -1), start=1):
        cout = chans[idx]
        conv_layer(f"convs.{i}.conv1", cin, cin, 3, False)
        conv_layer(f"convs.{i}.conv2", cin, cout, 3, True)
        conv_layer(f"convs.{i}.skip", cin, cout, 1, True, bias=False, activate=False)
        cin = cout
    conv_layer("final_conv", cin + 1, chans[0], 3, False)
    state["final_linear.0.weight"] = rng.normal(size=(chans[0], chans[0] * 16)).astype(np.float32)
    state["final_linear.0.bias"] = rng.normal(size=(chans[0],)).astype(np.float32)
    state["final_linear.1.weight"] = rng.normal(size=(1, chans[0])).astype(np.float32)
    state["final_linear.1.bias"] = rng.normal(size=(1,)).astype(np.float32)
    return state


def test_discriminator_from_torch_layout_state():
    config = DiscriminatorConfig(size=16, channels=(8, 6, 4))
    state = _torch_layout_state(config)
    converted_config, variables = discriminator_variables_from_state(state, "d.pt")
    assert converted_config == config
    params = variables["params"]
    # channel-major flatten: the converted final linear weight is only a transpose of torch's
    np.testing.assert_array_equal(
        params["final_linear_0"]["weight"], state["final_linear.0.weight"].T
    )
    np.testing.assert_array_equal(
        params["convs_1"]["conv2"]["conv"]["weight"],
        np.transpose(state["convs.1.conv2.1.weight"], (2, 3, 1, 0)),
    )
    out = Discriminator(config).apply(variables, jnp.ones((4, 16, 16, 3)))
    assert out.shape == (4, 1) and np.all(np.isfinite(out))
    del state["convs.2.skip.1.weight"]
    with pytest.raises(CheckpointError, match="convs.2.skip.1.weight"):
        discriminator_variables_from_state(state, "d.pt")


def test_minibatch_stddev_groups_strided_samples():
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 2, 2, 3))
    out = minibatch_stddev(x, group_size=4)
    assert out.shape == (8, 2, 2, 4)
    # sample n is grouped with n + 2, n + 4, n + 6 (batch viewed as (group=4, 2))
    members = x[jnp.array([1, 3, 5, 7])]
    expected = jnp.mean(jnp.sqrt(jnp.var(members, axis=0) + 1e-8))
    np.testing.assert_allclose(out[3, 0, 0, 3], expected, rtol=1e-6)
    np.testing.assert_allclose(out[1, 1, 1, 3], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        minibatch_stddev(x[:6], group_size=4)
