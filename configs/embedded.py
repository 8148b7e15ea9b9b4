"""The default run: GANgealing on the generator shipped in the package, with a weight-free loss.

`python -m gangealing_jax.train` (no flags) runs this on a laptop CPU in minutes, then scores
keypoint transfer on held-out procedural faces (PCK-Transfer) against the identity warp and
writes `summary.json`, the congealed average and a grid of congealed faces to its work directory.
The generator is 32x32 with 8 W+ layers (two per resolution 4, 8, 16, 32).
"""

from configs import default


def get_config():
    c = default.get_config()
    c.generator.checkpoint = "embedded"
    c.iters = 1_500
    c.batch = 16
    c.inject = 4  # the 4x4 and 8x8 layers: pose and layout
    c.ndirs = 1
    c.num_pca_samples = 50_000
    c.anneal_psi = 600  # psi reaches 0 (the fully shared target) at 40% of the run
    c.period = 300.0  # cosine learning-rate cycles after the anneal
    c.loss.name = "multiscale_structural"
    c.tv_weight = 1000.0
    c.flow_identity_weight = 1.0
    c.stn.transforms = ("similarity", "flow")
    c.stn.padding_mode = "border"
    c.stn.flow_size = 32
    c.stn.channels = tuple((2**i, 64) for i in range(11))
    c.real_size = 64
    c.log_every = 25
    c.vis_every = 500
    c.ckpt_every = 500
    c.n_sample = 32
    c.vis_batch_size = 32
    c.test_time.padding_mode = "border"

    c.eval.data = "procedural"  # held-out faces of the generator's own family (another seed)
    return c
