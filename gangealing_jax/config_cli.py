"""What the absl entry points share: the start of `main` and, for those that take an
ml_collections config (`--config file.py` plus `--config.a.b=value` overrides), the config flag.

ml_collections reads the overrides while the flag is being defined, at import time and before
any `main` runs, so a misspelt field would end in a traceback from inside the library. Here it
ends, like every other bad flag, in one `error:` line naming the override and exit status 2.
"""

from __future__ import annotations

import contextlib
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gangealing_jax import errors


def define_config_flag(default: str | None, help_text: str) -> flags.FlagHolder:
    """The locked `--config` flag. With a default, ml_collections applies the overrides right
    here; one naming a field the config does not have exits with one line."""
    with _unknown_field_exits():
        return config_flags.DEFINE_config_file("config", default, help_text, lock_config=True)


def run(main) -> None:
    """`app.run(main)`, with an override of a missing field one line rather than a traceback
    (without a default the config file is read while absl parses argv, inside app.run)."""
    app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    with _unknown_field_exits():
        return app.parse_flags_with_usage(argv)


@contextlib.contextmanager
def _unknown_field_exits():
    try:
        yield
    except (AttributeError, KeyError) as err:
        if errors.debug_requested():
            raise
        message = unknown_field_message(err.args[0] if err.args else "", sys.argv[1:])
        raise SystemExit(errors.report(errors.ConfigError(message))) from None


def unknown_field_message(error_text: str, argv: list[str]) -> str:
    """One line for an override naming a missing field. `error_text`: the library's message,
    the missing key in quotes, then perhaps a line 'Did you mean "x" instead of "y"?'."""
    text = str(error_text)  # quotes and newlines may arrive escaped (a KeyError inside one)
    suggestion = re.search(r'Did you mean \\?"(\w+)\\?" instead of \\?"(\w+)', text)
    first_name = re.search(r"[A-Za-z_]\w*", text)
    key = suggestion.group(2) if suggestion else first_name.group(0) if first_name else text
    overrides = [a for a in argv if a.startswith("--config.")]
    culprit = next(
        (a for a in overrides if key in a.split("=", 1)[0][len("--config.") :].split(".")),
        overrides[0] if overrides else "--config",
    )
    hint = (
        f"did you mean {suggestion.group(1)!r}?"
        if suggestion
        else "check the spelling against the config file (--config), which lists every field"
    )
    return f"{culprit}: the config has no field {key!r}; {hint}"


def start_main(argv: list[str]) -> None:
    """The first lines of each entry point's `main`: no stray arguments, quiet library logs."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
