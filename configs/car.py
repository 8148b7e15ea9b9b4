"""GANgealing on LSUN cars, 4 clusters with flips (the reference's training flags)."""

from configs import default


def get_config():
    c = default.get_config()
    c.generator.checkpoint = "car.pt"  # the official generator checkpoint
    c.iters = 1_500_000
    c.stn.padding_mode = "reflection"
    c.tv_weight = 2500.0
    c.loss.name = "lpips"
    c.loss.weights = "lpips_weights.npz"  # converted with gangealing_jax.convert.perceptual
    c.ndirs = 5
    c.inject = 6
    c.num_heads = 4
    c.flips = True
    c.sample_from_full_res = True
    c.test_time.iters = 3  # similarity iterations used at test time
    c.test_time.padding_mode = "reflection"
    return c
