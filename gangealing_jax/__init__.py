"""gangealing_jax: GAN-Supervised Dense Visual Alignment (GANgealing) in JAX/Flax."""

__version__ = "0.1.0"
