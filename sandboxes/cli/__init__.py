"""The ``sandboxes`` command: run code in any language in a sandbox from a terminal."""

from .app import cli, main

__all__ = ["cli", "main"]
