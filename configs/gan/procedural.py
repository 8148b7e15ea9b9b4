"""StyleGAN2 on the procedural cartoon faces: the generator shipped with the project.

`python -m gangealing_jax.train_gan --config configs/gan/procedural.py --workdir runs/gan`
trains it on one CPU; any field can be overridden, e.g. `--config.steps=2000`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # initialisation, latent/noise draws and the fixed sample latents

    # Architecture (generator and discriminator share the resolution and, by default, widths).
    c.model = ml_collections.ConfigDict()
    c.model.resolution = 32  # image side: a power of two (32 or 64 here)
    # Generator widths at resolutions 4, 8, ..., resolution: narrow at high resolution, where the
    # convolutions cost most (sized to train on a CPU in about an hour).
    c.model.channels = (128, 128, 64, 32)
    c.model.d_channels = ()  # discriminator widths per resolution; () = same as the generator's
    c.model.style_dim = 128  # z and w size
    c.model.n_mlp = 4  # layers of the mapping network
    c.model.lr_mlp = 0.01  # learning-rate multiplier of the mapping network
    c.model.stddev_group = 4  # minibatch-stddev group of the discriminator

    # Numerics of the generator's synthesis network and the discriminator (ops/precision.py);
    # parameters, optimizer state, EMA and loss reductions stay float32.
    c.compute = ml_collections.ConfigDict()
    c.compute.dtype = "float32"  # float32 | bfloat16: dtype of convolution/matmul inputs
    # auto (CPU: highest, else the backend's default) | highest | high | default
    c.compute.matmul_precision = "auto"
    c.compute.kernels = "auto"  # auto (by backend) | cpu (im2col custom VJPs) | xla (plain lax)

    # Data: the procedural family, or a prepared dataset of matching resolution.
    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # prepared dataset directory; "" = the procedural family below
    c.data.family = "faces"  # procedural family: faces | butterflies (data/families.py)
    c.data.size = 20_000  # procedural images rendered (about 3 ms each)
    c.data.seed = 0  # procedural family seed; also seeds the epoch permutations of any dataset
    c.data.in_memory_max_mb = 256  # render into memory up to this size, else into workdir/data
    # Background shapes per procedural image (inclusive range). Fewer than the family's default
    # (3, 8): at 32 px heavy clutter costs the generator capacity that the faces need.
    c.data.clutter_range = (1, 4)

    # Optimisation (the reference StyleGAN2 trainer's defaults unless noted).
    c.batch = 16  # global batch of real and of fake images per iteration
    c.steps = 6_000  # iterations (each: D step, G step, lazy regularisers, EMA)
    c.lr = 0.002  # Adam learning rate, betas (0, 0.99); lazily regularised nets rescale both
    # R1 weight (gamma) on real images. The reference's 10 is tuned for 256+ px; StyleGAN2-ADA's
    # rule of thumb 0.0002 * resolution**2 / batch gives 0.013 here.
    c.r1 = 0.1
    c.d_reg_every = 16  # R1 every this many iterations (lazy regularisation)
    c.path_regularize = 2.0  # path-length penalty weight; 0 disables it (and its lr rescaling)
    c.path_batch_shrink = 2  # path-length penalty uses batch // this fakes
    c.g_reg_every = 4  # path-length penalty every this many iterations
    c.mixing = 0.9  # probability of style mixing for a fake batch
    # Per-iteration decay of the generator EMA: a half-life of 10k images, as the reference's
    # 0.5 ** (32 / 10_000) is at its batch of 32.
    c.ema_decay = 0.5 ** (16 / 10_000)
    c.xflip = True  # mirror real images at random (the faces' own flips make this harmless)
    # Generator-guided discriminator regularisation (GGDR, Lee et al. 2022): a decoder on D
    # predicts, from each fake, the generator's feature map at ggdr_resolution; the per-pixel
    # cosine distance, times ggdr_weight, joins D's loss at every D step. 0 = off (no decoder);
    # the paper trains with 10.
    c.ggdr_weight = 0.0
    c.ggdr_resolution = 8  # target map's side: the paper's advice for small images, resolution / 4

    # Logging, samples, checkpoints and export.
    c.log_every = 50  # iterations between logged scalars (means over the interval)
    c.sample_every = 500  # iterations between sample grids of the EMA generator
    c.n_samples = 64  # images in a sample grid (fixed latents and noise)
    c.ckpt_every = 500  # iterations between checkpoints (each also exports the generator)
    c.keep_checkpoints = 3  # checkpoints kept on disk
    c.mean_samples = 10_000  # latents averaged for the exported mean w
    # Weight-free quality (training/gan_quality.py): Fréchet and kernel distances between
    # quality_samples EMA samples and as many training images, in a fixed random conv net's
    # features; logged every quality_every iterations (a multiple of log_every), 0 = never.
    c.quality_every = 0
    c.quality_samples = 1000
    c.progress = True  # tqdm progress bar
    c.fast_compile = False  # XLA backend optimisations off: compiles ~2x faster, runs slower
    c.distributed = False  # call jax.distributed.initialize() (several hosts)
    return c
