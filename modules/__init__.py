"""Model building blocks, one concept per file, and the baselines (one file each)."""
