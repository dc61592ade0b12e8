"""The local provider: bubblewrap sandboxes on this machine."""

from .provider import LocalProvider

__all__ = ["LocalProvider"]
