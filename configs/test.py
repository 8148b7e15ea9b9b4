"""A tiny run that exercises the whole training loop in well under a minute on a CPU."""

from configs import default


def get_config():
    c = default.get_config()
    c.generator.checkpoint = "random"  # an untrained 16x16 generator: no weights needed
    c.iters = 8
    c.batch = 4
    c.inject = 3
    c.ndirs = 2
    c.num_pca_samples = 2_000
    c.anneal_psi = 4
    c.period = 2.0
    c.loss.name = "multiscale_structural"
    c.tv_weight = 10.0
    c.stn.flow_size = 16
    c.stn.channels = tuple((2**i, 8) for i in range(11))
    c.real_size = 16
    c.log_every = 2
    c.vis_every = 4
    c.ckpt_every = 4
    c.n_sample = 8
    c.vis_batch_size = 8
    return c
