"""Data for training: pretraining instances (sentence splitting, masking, shards) and task files."""
