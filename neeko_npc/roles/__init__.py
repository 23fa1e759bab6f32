"""Roles: profiles, dialogue data, the .nrole asset file and the base-model fingerprint, and the torch-free maths
that serving applies to them: the gate and blends (gate.py), sampling and contrast (sampling.py), beats (beats.py).

The bottom layer: numpy only, never torch. Everything above depends on it; the daemon imports nothing else of
the method.
"""
