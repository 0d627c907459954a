"""Data sets, presets and input statistics for training."""
