"""pytest-sandboxes: fixtures, provider parametrization, record/replay and xdist support.

Loaded through the ``pytest11`` entry point (``pytest_sandboxes.plugin``).
Everything it adds carries a ``sandbox`` prefix, and a session that uses none
of it is left untouched.
"""

from .options import Settings

__all__ = ["Settings"]
