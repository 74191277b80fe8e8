"""Entropy coding glue (range coder) and the container format (bitstream)."""
