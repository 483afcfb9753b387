"""Sub-commands of ``universalseg``; each module has HELP, ``register(parser)`` and sets ``run``."""
from . import network

COMMANDS = {"network": network}
