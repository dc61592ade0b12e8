"""pytest-sandboxes: fixtures, provider parametrization, record/replay and xdist support.

Loaded through the ``pytest11`` entry point (``pytest_sandboxes.plugin``).
Everything it adds carries a ``sandbox`` prefix, and a session that uses none
of it is left untouched.
"""

import sys


def _leave_the_library_unrewritten() -> None:
    """Keep pytest from rewriting the asserts of the ``sandboxes`` library.

    pytest marks every package of a plugin's distribution for assert
    rewriting, which re-parses and re-compiles the library's 50-odd modules
    in each pytest process, and again each time where bytecode is not
    written (``PYTHONDONTWRITEBYTECODE``, a read-only site-packages): about
    0.9 s per xdist worker here. Only this plugin's own modules need it, and
    the library's asserts are never a test's. The hook keeps its marks in a
    private set, so this does nothing where a pytest release renames it.
    """
    for finder in sys.meta_path:
        marked, cache = getattr(finder, "_must_rewrite", None), getattr(finder, "_marked_for_rewrite_cache", None)
        if isinstance(marked, set) and isinstance(cache, dict):
            marked.discard("sandboxes")
            cache.clear()


_leave_the_library_unrewritten()

from .options import Settings  # noqa: E402  (after the library is left unrewritten)

__all__ = ["Settings"]
