"""Roles: profiles, dialogue data, the .nrole asset file and the base-model fingerprint.

The bottom layer: no torch, no inference. Everything above depends on it.
"""
