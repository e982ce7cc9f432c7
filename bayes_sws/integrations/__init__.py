"""Integrations with other frameworks (optional extras): PyTorch Lightning.

The highest layer of the package: it may import every other subpackage, and
nothing imports it. Each integration imports its framework lazily, so
``import bayes_sws`` never needs the extra.
"""
