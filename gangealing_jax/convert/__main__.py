"""Convert a reference checkpoint into converted-model bundles.

    python -m gangealing_jax.convert IN.pt OUT_DIR [--modules g_ema,t_ema]

Writes one bundle per module found (`OUT_DIR/g_ema`, `OUT_DIR/t_ema`, `OUT_DIR/classifier`, ...),
each loadable with `load_generator(OUT_DIR)`, `load_stn(OUT_DIR)`, `load_classifier(OUT_DIR)`;
an NVIDIA stylegan2-ada-pytorch snapshot (`.pkl`) gives `OUT_DIR/g_ema`, `OUT_DIR/g`, `OUT_DIR/d`;
`apps.model.load_model(OUT_DIR)` loads the STN with its cluster classifier.
"""

from __future__ import annotations

import argparse
import sys

from gangealing_jax.convert.convert_checkpoint import convert_checkpoint
from gangealing_jax.errors import ConfigError, entry_point


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gangealing_jax.convert", description=__doc__.split("\n")[1]
    )
    parser.add_argument(
        "checkpoint",
        help="reference checkpoint (.pt, .npz with the same keys, or an NVIDIA network pickle .pkl)",
    )
    parser.add_argument("out_dir", help="output directory for the converted bundles")
    parser.add_argument(
        "--modules",
        default="",
        help="comma-separated modules to convert (default: every known module present)",
    )
    parser.add_argument(
        "--lr-mlp", type=float, default=0.01, help="generator mapping lr multiplier"
    )
    parser.add_argument(
        "--num-fp16-res",
        type=int,
        default=0,
        help="the reference's flag for generators trained with float16 top resolutions; "
        "accepted for their checkpoints and changes nothing here: in float32 its rescaling "
        "cancels under demodulation",
    )
    args = parser.parse_args(argv)
    if args.num_fp16_res < 0:
        raise ConfigError(f"--num-fp16-res={args.num_fp16_res}: give 0 or a positive count")
    modules = [m for m in args.modules.split(",") if m] or None
    written = convert_checkpoint(args.checkpoint, args.out_dir, modules, lr_mlp=args.lr_mlp)
    for module, (kind, directory) in written.items():
        print(f"{module}: {kind} -> {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
