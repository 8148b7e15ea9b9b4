"""How many passes a step takes its batch in (training/passes.py)."""

import pytest

from gangealing_jax.training.passes import AUTO_MAX_PASSES, passes_per_step


def _passes(batch, flow_size=64, grad_accum=1, devices=1, images_per_pass=0, platform="cpu",
            multiple_of=1):  # fmt: skip
    return passes_per_step(
        batch=batch, grad_accum=grad_accum, devices=devices, flow_size=flow_size,
        images_per_pass=images_per_pass, platform=platform, multiple_of=multiple_of,
    )  # fmt: skip


@pytest.mark.parametrize(
    "batch, flow_size, expected",
    [
        (8, 64, 2),  # bench_small: 4 images of 64x64 per pass
        (40, 64, AUTO_MAX_PASSES),  # 4 per pass would take 10 passes: at most 5, of 8 images
        (16, 32, 1),  # the embedded default: 16 images of 32x32 fit one pass
        (40, 128, AUTO_MAX_PASSES),  # the reference's flow size
        (7, 64, 1),  # 7 splits only into 7 passes of one image: more than the automatic limit
        (1, 64, 1),
    ],
)
def test_automatic_passes_on_cpu(batch, flow_size, expected):
    assert _passes(batch, flow_size) == expected


def test_automatic_passes_count_each_devices_share_after_grad_accum():
    assert _passes(16, grad_accum=2) == 4  # 8 images per micro-batch -> 2 passes of 4 each
    assert _passes(16, devices=2) == 2  # 8 images per device
    assert _passes(8, devices=2) == 1  # 4 per device fit one pass


def test_accelerators_take_one_pass_per_micro_batch_unless_asked():
    assert _passes(40, platform="gpu") == 1
    assert _passes(40, grad_accum=4, platform="tpu") == 4
    assert _passes(40, platform="gpu", images_per_pass=10) == 4


def test_images_per_pass_is_an_upper_bound_met_with_the_fewest_passes():
    assert _passes(8, images_per_pass=3) == 4  # 2 images per pass: 3 does not divide 8
    assert _passes(8, images_per_pass=8) == 1
    assert _passes(40, images_per_pass=1) == 40  # explicit: no automatic limit on the count
    assert _passes(8, images_per_pass=100) == 1


def test_passes_keep_the_equivariance_stride_whole():
    # 6 images, at most 4 per pass: 2 passes of 3, or with a stride of 2 3 passes of 2.
    assert _passes(6) == 2
    assert _passes(6, multiple_of=2) == 3
    assert _passes(6, multiple_of=4) == 1  # no split keeps multiples of 4: one pass
