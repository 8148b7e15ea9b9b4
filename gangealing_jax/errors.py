"""The project's error types, and the one handler every command-line entry point shares.

Library code raises these for faults the user can fix (a bad flag or config field, a missing or
unreadable input, a damaged checkpoint, weights that were never converted), each message naming
the path or field as the user typed it and saying what to do. Anything else is a bug and keeps its
traceback.

Entry points wrap their `main` with `entry_point`: an expected error becomes one line,
`error: <message>` on stderr, and exit status 2. Set GANGEALING_DEBUG=1 (or, for the absl entry
points, pass --verbosity=1) to get the full traceback instead.

This module imports nothing from the package, so every layer can raise its types.
"""

from __future__ import annotations

import functools
import os
import sys

EXIT_CODE = 2  # the status of every expected error (argparse uses 2 for a bad flag, too)
INTERRUPTED_CODE = 130  # the shell's status for a process ended by SIGINT
DEBUG_ENV = "GANGEALING_DEBUG"


class GangealingError(Exception):
    """A fault in what the user gave the program; the message says what and how to fix it."""


class ConfigError(GangealingError, ValueError):
    """A config field or flag holds a value the program cannot run with."""


class InputFileError(GangealingError, ValueError):
    """An input file or folder is missing, unreadable, or not what was asked for."""


class CheckpointError(InputFileError):
    """A checkpoint or model file is missing, unreadable, or does not hold what was asked for."""


class MissingWeightsError(GangealingError, FileNotFoundError):
    """A component that needs converted weights was given no file, or a missing one."""


class MissingDependencyError(GangealingError, ImportError):
    """An optional package (a video decoder, scipy, torch) that this input needs is absent."""


def debug_requested() -> bool:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return True
    try:  # absl's --verbosity, when the entry point parsed absl flags
        from absl import flags

        return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value >= 1
    except (ImportError, KeyError):
        return False


def report(err: BaseException) -> int:
    """Prints `error: <message>` on stderr; the exit status to end with."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_CODE


# OSError (a full disk, a folder the user may not write, a file that vanished) is the machine's
# state, not a bug: its message names the path, which is all the user needs.
EXPECTED = (GangealingError, OSError)


def entry_point(main):
    """Wraps a command's `main`: an expected error exits with one line and status 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except EXPECTED as err:
            if debug_requested():
                raise
            raise SystemExit(report(err)) from None
        except KeyboardInterrupt:
            # Ctrl-C outside a training loop's own handler (during setup, an export, an app):
            # nothing half-written is kept (every write is atomic), so one line is enough.
            if debug_requested():
                raise
            print("interrupted", file=sys.stderr)
            raise SystemExit(INTERRUPTED_CODE) from None

    return wrapped
