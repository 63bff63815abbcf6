"""Data sources (CIFAR, image and audio folders, synthetic sets) and their input pipelines."""
