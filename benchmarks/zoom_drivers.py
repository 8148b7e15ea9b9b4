"""Which objective terms reward zooming out, for a generator and a recipe.

A similarity STN collapses by zooming out when the objective falls as the sampling grid widens:
the congealed image then shrinks towards a flat field of padding colour. This prints, for a
range of zoom factors s (s > 1 samples s image widths, i.e. the content shrinks by s), the
perceptual distance of the zoomed G(w) to its congealing target G(mix(c, w)) at psi = 0 (the
end of the anneal) and the mirror-symmetry distance of the zoomed image, with no STN in between:
the landscape the STN's scale moves in, before any alignment. With `--posed`, G(w) is first
moved by the recipe's random poses at full strength (what the STN is shown once psi has
annealed), so the landscape is that of an STN that has not learned to undo them yet. One JSON
line per padding mode and zoom; `total` weighs the terms as the config does.

    python -m benchmarks.zoom_drivers [--generator runs/gan/generator.npz] [--batch 64] [--posed]

A term whose value at s = 4 is below its value at s = 1 pulls the STN towards the collapse.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from configs import embedded
from gangealing_jax.losses.gangealing import resize_to_flow
from gangealing_jax.models.congealing import mix_latents
from gangealing_jax.models.stylegan2 import broadcast_w
from gangealing_jax.ops.sampling import affine_grid, grid_sample
from gangealing_jax.training.augment import random_poses
from gangealing_jax.training.gangealing_setup import build_run, pose_augmentation

ZOOMS = (0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 8.0)


def zoom_matrix(scale: float, batch: int) -> jnp.ndarray:
    """(batch, 2, 3) affine_grid matrices sampling `scale` image widths around the centre."""
    matrix = jnp.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]], jnp.float32)
    return jnp.broadcast_to(matrix, (batch, 2, 3))


def landscape(config, batch: int, seed: int, zooms, paddings, posed: bool = False):
    setup, state = build_run(config, jax.random.PRNGKey(config.seed))
    generator, frozen = setup.generator, setup.frozen
    gcfg = generator.config
    flow = config.stn.flow_size
    z = jax.random.normal(jax.random.PRNGKey(seed), (batch, gcfg.style_dim))

    def synthesize(w_plus):
        return generator.apply(frozen.generator, w_plus, noise_mode="const", method="synthesize")

    w = generator.apply(frozen.generator, z, method="map")
    images = synthesize(broadcast_w(w, gcfg.n_latent))
    if posed:
        poses = random_poses(jax.random.PRNGKey(seed + 1), (batch,), pose_augmentation(config), 1.0)
        images = grid_sample(
            images, affine_grid(poses, images.shape[1:3]), config.augment.padding_mode
        )
    images = resize_to_flow(images, flow)
    coefficients = state.params["congealing"]["coefficients"]
    w_target = mix_latents(
        w, frozen.directions, frozen.lat_mean, coefficients, jnp.float32(0.0), config.inject,
        gcfg.n_latent,
    )  # fmt: skip
    target = resize_to_flow(synthesize(w_target), flow)

    @jax.jit
    def terms(images, target, scale, padding_index):
        grid = affine_grid(zoom_matrix(1.0, batch) * scale, images.shape[1:3])
        zoomed = jax.lax.switch(
            padding_index, [lambda g, p=p: grid_sample(images, g, p) for p in paddings], grid
        )
        perceptual = jnp.mean(setup.distance(zoomed, target))
        mirror = setup.distance(zoomed, jnp.flip(zoomed, axis=2))
        upside_down = setup.distance(zoomed, jnp.flip(zoomed, axis=1))
        return perceptual, jnp.mean(mirror), jnp.mean(mirror / (upside_down + 1e-3))

    for index, padding in enumerate(paddings):
        for scale in zooms:
            perceptual, symmetry, ratio = (
                float(v) for v in terms(images, target, jnp.float32(scale), index)
            )
            yield {
                "generator": config.generator.checkpoint,
                "padding": padding,
                "posed": posed,
                "zoom": scale,
                "perceptual": round(perceptual, 5),
                "symmetry": round(symmetry, 5),
                "mirror_over_vertical": round(ratio, 5),
                "total": round(perceptual + config.symmetry_weight * symmetry, 5),
            }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="embedded", help="generator.checkpoint")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1, help="seed of the z draws")
    parser.add_argument("--zooms", default=",".join(str(s) for s in ZOOMS))
    parser.add_argument("--paddings", default="border,reflection")
    parser.add_argument("--posed", action="store_true", help="pose G(w) as the recipe does")
    parser.add_argument("--num-pca-samples", type=int, default=20_000)
    args = parser.parse_args(argv)
    config = embedded.get_config()
    config.generator.checkpoint = args.generator
    config.num_pca_samples = args.num_pca_samples
    zooms = [float(s) for s in args.zooms.split(",")]
    paddings = args.paddings.split(",")
    for record in landscape(config, args.batch, args.seed, zooms, paddings, args.posed):
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
