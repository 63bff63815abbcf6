"""The training loop: one epoch, evaluation, precision settings, resuming, and train.py's run."""
