"""Explore the latent directions of a generator.

    python -m gangealing_jax.directions --generator embedded --method sefa --num 8 \
        --layers 0-5 --sigmas -3,3 --out runs/directions [--model runs/embedded]

--generator: a checkpoint (.pt/.npz), a converted directory, "embedded" (the shipped generator)
or "random". --method learned takes --directions W/directions.npz from
`python -m gangealing_jax.train_directions`. Writes directions.npz, direction_XX.png (rows:
samples, columns: shifts), overview.png and, with --model, sensitivity.json (pose vs appearance).
"""

import argparse
import sys

from gangealing_jax.errors import entry_point


@entry_point
def main(argv=None) -> int:
    from gangealing_jax.apps import directions as explorer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--generator", default="embedded", help="checkpoint, converted directory, embedded, random")
    add("--method", required=True, choices=("ganspace", "sefa", "learned"))
    add("--out", required=True, help="output directory")
    add("--num", type=int, default=8, help="directions shown")
    add("--layers", default="all", help="W+ layers edited (and factorised by SeFa): a-b or all")
    add("--sigmas", default="-3,3", help="shift range in standard deviations: low,high")
    add("--steps", type=int, default=7, help="shifts per row")
    add("--samples", type=int, default=4, help="rows of every direction's grid")
    add("--seed", type=int, default=0)
    add("--num_w_samples", type=int, default=20_000, help="mapped samples for PCA and the stds")
    add("--directions", default=None, help="a directions.npz to show instead of finding one")
    add("--model", default=None, help="alignment model: also write sensitivity.json")
    args = parser.parse_args(argv)
    model = None
    if args.model is not None:
        from gangealing_jax.apps.model import load_model

        model = load_model(args.model)
    result = explorer.explore(
        args.generator,
        args.method,
        args.out,
        num=args.num,
        layers=args.layers,
        sigmas=explorer.parse_sigmas(args.sigmas),
        steps=args.steps,
        samples=args.samples,
        seed=args.seed,
        num_w_samples=args.num_w_samples,
        directions_path=args.directions,
        model=model,
    )
    print("\n".join(explorer.summary_lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
