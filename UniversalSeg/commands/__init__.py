"""Sub-commands of ``universalseg``; each module has HELP, ``register(parser)`` and sets ``run``."""
from . import demo, evaluate, finetune, info, models, network, predict, synth, train, worker, zoo

__all__ = ["COMMANDS"]

COMMANDS = {"demo": demo, "synth": synth, "train": train, "finetune": finetune, "evaluate": evaluate,
            "predict": predict, "info": info, "models": models, "network": network,
            "worker": worker, "zoo": zoo}
