"""A few steps of direction learning on an untrained 16x16 generator, for tests."""

from configs.directions import default


def get_config():
    c = default.get_config()
    c.generator.checkpoint = "random"
    c.num_directions = 3
    c.num_w_samples = 256
    c.reconstructor.width = 4
    c.reconstructor.depth = 2
    c.iters = 4
    c.batch = 8
    c.lr = c.directions_lr = 1e-2
    c.log_every = 1
    c.ckpt_every = 2
    c.progress = False
    return c
