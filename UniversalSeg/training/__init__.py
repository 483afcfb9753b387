"""Training: partial-label losses, the resumable DDP trainer, evaluation on whole volumes."""
