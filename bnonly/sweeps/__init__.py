"""Grids of train.py runs, local or as a Slurm job array (settings and processes only, never the trainer)."""
