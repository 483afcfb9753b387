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
import re
import sys

from . import __version__
from .commands import COMMANDS

__all__ = ["CTRL_C_GRACE_S", "NEGATIVE_NUMBER", "build_parser", "main"]

NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_MODEL, EXIT_MEMORY, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="universalseg",
        description="Universal 3D medical image segmentation steered by task and modality priors.")
    parser.add_argument("--version", action="version", version=f"UniversalSeg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        # "-1e-05" is a number, not an option (argparse's own pattern knows -1 and -.5 only, so
        # `--roi -1e-05 ...` was refused as "expected 6 arguments"); no option of ours starts -<digit>
        command._negative_number_matcher = NEGATIVE_NUMBER
        module.register(command)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .parent_watch import exit_with_parent
    exit_with_parent()  # started by the Slicer module: end with it, even when it crashes
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch

    from .errors import InputError
    from .model_download import DownloadError
    from .model_package import PackageError

    def fail(exc, code):
        print(f"universalseg {args.command}: error: {exc}", file=sys.stderr)
        return code

    stop_watch = _end_soon_after_ctrl_c(args.command)
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
    finally:
        stop_watch()


CTRL_C_GRACE_S = 3.0


def _end_soon_after_ctrl_c(command: str):
    """Ctrl-C raises KeyboardInterrupt in the main thread, but only between two Python steps: a
    long call into C (a resampling, a convolution, a gzip of a large volume) delays it for as long
    as it runs. A watcher thread, woken by the signal itself (``signal.set_wakeup_fd``), gives the
    main thread ``CTRL_C_GRACE_S`` seconds to end; then it removes the temporaries being written
    (``file_modes.PENDING``: nothing half-written stays) and ends the process with exit 130.
    Returns the function that takes the watcher down again."""
    import os
    import signal
    import socket
    import threading

    from .file_modes import PENDING
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    receive, send = socket.socketpair()
    send.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
    except ValueError:
        receive.close(), send.close()
        return lambda: None

    ended = threading.Event()

    def watch():
        try:
            while True:
                signals = receive.recv(64)
                if not signals:  # closed: the command ended
                    return
                if signal.SIGINT in signals:
                    break
        except OSError:
            return
        if ended.wait(CTRL_C_GRACE_S):  # the main thread ended in time (KeyboardInterrupt)
            return
        for tmp in list(PENDING):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        os.write(2, f"universalseg {command}: interrupted\n".encode())
        os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=watch, name="ctrl-c", daemon=True).start()

    def stop():
        ended.set()
        signal.set_wakeup_fd(previous)
        send.close()
        receive.shutdown(socket.SHUT_RDWR)
        receive.close()
    return stop
