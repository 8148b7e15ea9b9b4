"""Learned latent directions (Voynov & Babenko 2020) of a frozen generator: every field.

    python -m gangealing_jax.train_directions --config configs/directions/default.py \
        --workdir runs/directions [--config.num_directions=32 ...]
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # random seed (initial directions and reconstructor, pairs)

    # The frozen generator, named as in the GANgealing configs.
    c.generator = ml_collections.ConfigDict()
    c.generator.checkpoint = "embedded"  # .pt/.npz checkpoint, converted directory, "embedded"
    c.generator.module = "g_ema"  # which module of the checkpoint holds the generator
    c.generator.lr_mlp = 0.01  # mapping-network lr multiplier (not stored in checkpoints)
    # Sizes of an untrained generator, used only with checkpoint="random" (smoke tests).
    c.generator.random_size = 16
    c.generator.random_style_dim = 32
    c.generator.random_n_mlp = 2
    c.generator.random_channels = 16

    # The directions.
    c.num_directions = 16  # K directions learned (the reconstructor's classes)
    c.constraint = "orthonormal"  # orthonormal rows, or "unit": unit-norm rows only
    c.layers = "all"  # W+ layers a shift moves: "a-b" (inclusive) or "all"
    c.shift_scale = 6.0  # largest |shift|, in RMS spreads of W per dimension
    c.min_shift = 0.5  # smallest |shift|: smaller ones are invisible and teach nothing
    c.num_w_samples = 20_000  # mapped samples for W's spread and the exported per-direction std

    # The reconstructor: which direction, and how far, from an image pair.
    c.reconstructor = ml_collections.ConfigDict()
    c.reconstructor.size = 64  # pairs larger than this are resized to it first
    c.reconstructor.width = 32  # channels of the first conv, doubled at each of `depth` convs
    c.reconstructor.depth = 3  # stride-2 convs

    # Optimisation: Adam, one learning rate per part.
    c.iters = 20_000  # optimizer steps
    c.batch = 32  # global image pairs per step
    c.lr = 1e-4  # reconstructor learning rate
    c.directions_lr = 1e-4  # direction-matrix learning rate
    c.shift_weight = 0.25  # weight of the L1 shift regression beside the cross-entropy

    # Logging and checkpoints.
    c.log_every = 25  # steps between scalar logs
    c.ckpt_every = 2_000  # steps between checkpoints (and at the end, and on SIGTERM)
    c.keep_checkpoints = 3  # checkpoints kept on disk
    c.num_devices = 0  # devices of the data-parallel mesh (0 = all)
    c.progress = True  # tqdm progress bar
    return c
