"""A small but complete GANgealing run for timing the train step (benchmarks/train_step.py).

An untrained 64x64 generator (style_dim 256, 8 mapping layers, 128 channels at every resolution),
a similarity + flow STN at 64x64 with 128 channels at every resolution, LPIPS, border padding.
psi is traced, so its value does not change the cost of a step; the anneal is long so that the
benchmark, which starts at iteration anneal_psi / 2, runs every step at psi ~= 0.5.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.generator.checkpoint = "random"
    c.generator.random_size = 64
    c.generator.random_style_dim = 256
    c.generator.random_n_mlp = 8
    c.generator.random_channels = 128
    c.batch = 8
    c.ndirs = 1
    c.inject = 5
    c.num_pca_samples = 10_000
    c.anneal_psi = 1_000_000  # psi(anneal_psi / 2) = 0.5 under the cosine anneal
    c.loss.name = "lpips"
    c.loss.weights = ""  # the benchmark draws random VGG/LPIPS weights (speed only)
    c.tv_weight = 2500.0
    c.flow_identity_weight = 1.0
    c.stn.transforms = ("similarity", "flow")
    c.stn.padding_mode = "border"
    c.stn.flow_size = 64
    c.stn.channels = tuple((2**i, 128) for i in range(11))  # resolutions 1..1024
    c.real_size = 64
    return c
