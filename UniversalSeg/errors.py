"""The one base class for bad input, so that the command line can tell it from a bug.

Everything a user can get wrong (an option, an image, a catalog, a config, a name, a checkpoint
file) raises an ``InputError`` subclass with a message that names the problem and the fix; the CLI
prints that one line and exits 2. Any other exception, a plain ``ValueError`` from a programming
mistake included, keeps its traceback. ``InputError`` is a ``ValueError`` so that library callers
catching ``ValueError`` keep working. Torch-free: the Slicer GUI process imports it.
"""

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input from the user; the message names the option or file and what to do."""
