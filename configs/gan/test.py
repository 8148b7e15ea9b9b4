"""A tiny StyleGAN2 run for tests: a few iterations in seconds."""

from configs.gan import procedural


def get_config():
    c = procedural.get_config()
    c.model.resolution = 8
    c.model.channels = (8, 8)
    c.model.style_dim = 8
    c.model.n_mlp = 1
    c.data.size = 32
    c.batch = 8
    c.steps = 4
    c.d_reg_every = 2
    c.g_reg_every = 2
    c.log_every = 1
    c.sample_every = 2
    c.n_samples = 4
    c.ckpt_every = 2
    c.keep_checkpoints = 2
    c.mean_samples = 64
    c.ggdr_weight = 0.0
    c.ggdr_resolution = 8
    c.quality_every = 0
    c.quality_samples = 16
    c.progress = False
    c.fast_compile = True
    return c
