"""The ``universalseg`` command line. Each sub-command lives in its own module under ``commands/``
and registers itself here; this file only dispatches and turns known errors into exit codes.

Exit codes: 0 ok, 1 unexpected error, 2 bad usage or bad input (config, catalog, names, images),
3 model problem (corrupt or foreign package, newer format, failed download or checksum),
4 out of memory, 130 interrupted.
"""
from __future__ import annotations

import argparse
import errno
import logging
import sys

from . import __version__
from .commands import COMMANDS

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_MODEL, EXIT_MEMORY, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="universalseg",
        description="Universal 3D medical image segmentation steered by task and modality priors.")
    parser.add_argument("--version", action="version", version=f"UniversalSeg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        module.register(sub.add_parser(name, help=module.HELP, description=module.__doc__))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .parent_watch import exit_with_parent
    exit_with_parent()  # started by the Slicer module: end with it, even when it crashes
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch

    from .model_download import DownloadError
    from .model_package import PackageError
    from .errors import InputError

    def fail(exc, code):
        print(f"universalseg {args.command}: error: {exc}", file=sys.stderr)
        return code

    try:
        return int(args.run(args) or 0)
    except (PackageError, DownloadError) as exc:
        return fail(exc, EXIT_MODEL)
    except (MemoryError, torch.cuda.OutOfMemoryError) as exc:
        return fail(exc or "out of memory; crop with --roi, request fewer tasks or use --device cpu",
                    EXIT_MEMORY)
    except (InputError, FileNotFoundError) as exc:  # bad input; a bare ValueError is a bug: traceback
        return fail(exc, EXIT_BAD_INPUT)
    except OSError as exc:  # the machine, not the program: full disk, permissions, read-only folder
        where = f" ({exc.filename})" if exc.filename else ""
        advice = ("free space or choose another output location; nothing was left half-written"
                  if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "check the path and its permissions")
        return fail(f"{exc.strerror or exc}{where}: {advice}", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print(f"universalseg {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
