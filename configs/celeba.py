"""GANgealing on in-the-wild CelebA (the reference's training flags; its generator is 128x128)."""

from configs import default


def get_config():
    c = default.get_config()
    c.generator.checkpoint = "celeba.pt"  # the official generator checkpoint
    c.iters = 1_500_000
    c.stn.padding_mode = "border"
    c.tv_weight = 2500.0
    c.loss.name = "lpips"
    c.loss.weights = "lpips_weights.npz"  # converted with gangealing_jax.convert.perceptual
    c.ndirs = 512
    c.inject = 6
    c.test_time.iters = 1  # similarity iterations used at test time
    c.test_time.padding_mode = "border"
    return c
