"""Every GANgealing training field, with the reference's defaults where it has one.

Per-model files import this and override; `python -m gangealing_jax.train --config configs/x.py
--config.batch=40` sets any field from the command line.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # random seed of the run (z samples, noise, init)

    # The frozen generator.
    c.generator = ml_collections.ConfigDict()
    c.generator.checkpoint = "embedded"  # .pt/.npz/.pkl (NVIDIA) checkpoint, bundle dir, "embedded"
    c.generator.module = "g_ema"  # which module of the checkpoint holds the generator
    c.generator.lr_mlp = 0.01  # mapping-network lr multiplier (not stored in checkpoints)
    # The reference's flag for generators trained with float16 top resolutions (the official
    # bicycle and tvmonitor ones: 4). Accepted for their commands; in float32 its rescaling
    # cancels under demodulation, so it changes no image (tests/test_fp16_resolutions.py).
    c.generator.num_fp16_res = 0
    # Sizes of an untrained generator, used only with checkpoint="random" (smoke tests).
    c.generator.random_size = 16
    c.generator.random_style_dim = 32
    c.generator.random_n_mlp = 2
    c.generator.random_channels = 16

    # Iterations and batch.
    c.iters = 1_500_000  # total training iterations (optimizer steps)
    c.batch = 40  # global batch per optimizer step (reference: 5 per GPU x 8 GPUs)
    c.grad_accum = 1  # micro-batches accumulated per step: batch/grad_accum images per forward

    # Numerics of the conv nets (generator synthesis, STN trunks, VGG/LPIPS); see ops/precision.py.
    # Parameters, optimizer state, EMA, sampling grids, warps, PCA and loss sums stay float32.
    c.compute = ml_collections.ConfigDict()
    c.compute.dtype = "float32"  # float32 | bfloat16: dtype of convolution/matmul inputs
    c.compute.matmul_precision = (
        "auto"  # auto (CPU: highest, else default) | highest | high | default
    )
    c.compute.kernels = "auto"  # auto (by backend) | cpu (im2col custom VJPs) | xla (plain lax)
    # At most this many images per device in one forward/backward pass of a step, more passes
    # where needed (gradients averaged; the same result). 0 = auto: on CPU, passes of at most
    # 16,384 pixels at the STN's resolution (faster there); elsewhere one pass per micro-batch.
    c.compute.images_per_pass = 0

    # GANgealing hyper-parameters.
    c.inject = 5  # W+ layers [0, inject) receive the congealing vector c
    c.ndirs = 1  # number of W-space PCA directions c may move along
    c.num_pca_samples = 1_000_000  # mapped samples used for the W-space PCA
    c.pca_exact = False  # exact chunked PCA instead of the reference's IncrementalPCA
    c.congealing = ml_collections.ConfigDict()
    # Directions c moves along: pca (the reference) | sefa (of layers [0, inject)) | the path of
    # a directions.npz (`python -m gangealing_jax.directions`, or learned: train_directions).
    c.congealing.basis = "pca"
    c.anneal_psi = 150_000  # iterations over which psi anneals from 1 to 0
    c.anneal_fn = "cosine"  # psi schedule: cosine | linear
    c.freeze_ll = False  # keep the congealing vector fixed at its initial value
    c.sample_from_full_res = False  # sample pixels from the full-resolution G output
    c.num_heads = 1  # clusters learned and congealed independently (>1: clustering GANgealing)
    c.flips = False  # also try the mirrored input and optimise the min of both losses

    # Random similarity poses applied to G(w) before the STN (the target stays put), ramped up as
    # psi anneals: teaches poses wider than the generator's own. Not in the reference (all 0).
    c.augment = ml_collections.ConfigDict()
    c.augment.rotation_deg = 0.0  # rotation uniform in [-r, r] degrees
    c.augment.log_scale = 0.0  # zoom exp(u), u uniform in [-s, s]
    c.augment.translation = 0.0  # shift per axis, uniform in [-t, t] normalized units
    c.augment.padding_mode = "reflection"  # fill of pixels moved in from outside G(w)
    # Weight of the disagreement (squared, in the congealed frame) between the similarity
    # congealing G(w) and the one congealing its posed copy, mapped back through the pose.
    c.augment.equivariance_weight = 0.0
    c.augment.equivariance_every = 1  # ... over every k-th image of the batch only (k >= 1)

    # Loss.
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "vgg_ssl"  # perceptual loss: lpips | vgg_ssl | a weight-free loss
    c.loss.weights = ""  # converted weights (.npz) for lpips / vgg_ssl
    c.loss.num_scales = 3  # multiscale_structural: 2x-pooled scales compared
    c.loss.standardize = False  # multiscale_structural: ignore per-image channel gain and offset
    c.tv_weight = 1000.0  # total-variation (Huber) weight on the residual flow
    c.flow_identity_weight = 1.0  # L2 weight pulling the residual flow to zero
    # Distance of each congealed image to its mirror (not in the reference; 0 = off): a prior for
    # left-right symmetric categories that pulls the congealed pose upright and centred.
    c.symmetry_weight = 0.0
    # Distance (in the congealed frame) between the similarity congealing of the mirrored G(w)
    # and the mirror of G(w)'s congealing (not in the reference; 0 = off): a consistency prior
    # for left-right symmetric categories.
    c.mirror_weight = 0.0
    # Squared log-zoom of the STN's sampling grids beyond zoom_out_max image widths (not in the
    # reference; 0 = off): a guard against zooming out until padding fills the output.
    c.zoom_out_weight = 0.0
    c.zoom_out_max = 1.5  # grid spread (1 = the image itself) beyond which zoom_out_weight acts

    # Spatial transformer.
    c.stn = ml_collections.ConfigDict()
    c.stn.transforms = ("similarity", "flow")  # warp classes, applied in order
    c.stn.padding_mode = "reflection"  # border | zeros | reflection
    c.stn.flow_size = 128  # resolution of the regressed flow (and of the congealed output)
    c.stn.channel_multiplier = 0.5  # width of the STN trunk relative to the reference table
    c.stn.channels = ()  # explicit trunk channels per resolution (overrides the multiplier)
    # "disk" fades the STN's input outside the inscribed disk (not in the reference): with pose
    # augmentation, the padded corners of a rotated image otherwise tell the STN the angle.
    c.stn.input_mask = "none"
    c.real_size = 256  # resolution of real images the STN will sample from (supersize)

    # Optimisation: Adam(0.9, 0.999, 1e-8), decaying cosine warm restarts after psi annealing.
    c.stn_lr = 1e-3  # base learning rate of the STN
    c.ll_lr = 1e-2  # base learning rate of the congealing vector
    c.period = 37_500.0  # cosine period in iterations
    c.decay = 0.9  # learning-rate decay at every restart
    c.tm = 2  # period multiplier at every restart
    c.ema_decay = 0.5 ** (32 / 10_000)  # per-step EMA of the STN weights

    # Logging, visuals and checkpoints.
    c.log_every = 25  # iterations between scalar logs
    c.vis_every = 5_000  # iterations between image grids
    c.ckpt_every = 50_000  # iterations between checkpoints (also at every zero-lr iteration)
    c.keep_checkpoints = 3  # checkpoints kept on disk
    c.n_sample = 64  # images in each visual grid
    c.n_mean = 8_000  # real images averaged for the congealed-average visual
    c.vis_batch_size = 250  # batch used when making visuals
    c.real_data_path = ""  # prepared real dataset, used for visuals (and evaluation) only
    c.num_devices = 0  # devices of the data-parallel mesh (0 = every device of every host)
    c.distributed = False  # join a multi-host run through jax.distributed.initialize()

    # Test-time settings stored with the exported model (applied only when a user asks for them).
    c.test_time = ml_collections.ConfigDict()
    c.test_time.iters = 1  # similarity-STN iterations at test time
    c.test_time.padding_mode = "reflection"  # padding used when congealing real images
    c.test_time.flips = False  # flip-aware inference by default
    # Regress each similarity from the image and its mirror together (not in the reference): for
    # left-right symmetric categories it cancels the STN's asymmetric error (twice the cost).
    c.test_time.mirror_average = False

    # Evaluation after training (PCK-Transfer on a prepared dataset with keypoints).
    c.eval = ml_collections.ConfigDict()
    # data: a prepared dataset with keypoints, "procedural" (held-out images of a procedural family
    # rendered into workdir/eval_data with the fields below), or "" for no evaluation.
    c.eval.data = ""
    c.eval.protocol = "spair"  # spair: fixed pairs, alpha * max bbox side | cub: image side
    c.eval.alphas = (0.1, 0.05)  # PCK thresholds
    c.eval.flips = False  # flip-aware inference when transferring points
    c.eval.batch = 16  # pairs per (sharded) batch
    c.eval.num_pairs = 1_000  # pairs scored (cub protocol, and rendered procedural sets)
    c.eval.resolution = 64  # procedural: image side
    c.eval.count = 500  # procedural: images rendered
    c.eval.seed = 1_000_003  # procedural: family seed (the generator trained on seed 0)
    c.eval.clutter_range = (1, 4)  # procedural: background shapes per image
    c.eval.family = "faces"  # procedural: faces | butterflies (data/families.py)
    return c
