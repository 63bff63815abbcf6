"""Model families: pure nn.Module code and freezing by module type (no training, no I/O)."""
