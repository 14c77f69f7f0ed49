"""Sooner: a git-driven job scheduler."""

__version__ = "0.1.0"
