"""Bundled data sets (no downloads), reference networks and plain training loops."""
