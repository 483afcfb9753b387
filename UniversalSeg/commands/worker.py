"""Keep a model and an image loaded and answer click refinements (the Slicer module's warm worker).

    universalseg worker          # JSON requests on stdin, one per line; replies on stdout

The protocol (open, mask, refine, undo, set_mask, cancel, close) is described in
``UniversalSeg/inference/worker.py``. Exit code 0 on "close" or end of input.
"""

__all__ = ["HELP", "register", "run"]

HELP = "warm worker for click refinement: JSON requests on stdin, replies on stdout"


def register(parser):
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..inference.worker import serve
    return serve()
