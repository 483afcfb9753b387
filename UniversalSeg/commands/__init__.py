"""Sub-commands of ``universalseg``; each module has HELP, ``register(parser)`` and sets ``run``."""
from . import evaluate, network, synth, train

COMMANDS = {"synth": synth, "train": train, "evaluate": evaluate, "network": network}
