"""GANgealing on LSUN cats, self-supervised VGG loss (the reference's training flags)."""

from configs import default


def get_config():
    c = default.get_config()
    c.generator.checkpoint = "cat.pt"  # the official generator checkpoint
    c.iters = 1_500_000
    c.stn.padding_mode = "border"
    c.tv_weight = 1000.0
    c.loss.name = "vgg_ssl"
    c.loss.weights = "vgg_ssl_weights.npz"  # converted with gangealing_jax.convert.perceptual
    c.test_time.iters = 3  # similarity iterations used at test time
    c.test_time.padding_mode = "border"
    return c
