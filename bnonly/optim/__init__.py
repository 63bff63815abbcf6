"""Optimizers (the stochastic L-BFGS and its objective) and the optimizer and schedule factories."""
