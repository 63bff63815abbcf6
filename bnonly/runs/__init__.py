"""Run folders: writing them, reading them back, seed groups, statistics and plots (no training code)."""
