"""The `gsup` console script."""

from gsup.cli import main

__all__ = ["main"]
