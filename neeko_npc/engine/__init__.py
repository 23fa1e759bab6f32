"""Inference backends. Nothing here imports torch."""
