"""The error taxonomy.

Only infrastructure errors (``ProviderError`` and its subclasses) are ever
retried or failed over. A program that exits non-zero is a result, not an
error; ``ExecutionResult.check()`` turns it into ``CommandFailed`` on request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import ExecutionResult


class SandboxError(Exception):
    """Base class of every error this library raises."""


class ProviderError(SandboxError):
    """The provider's infrastructure failed; retrying or failing over may help."""

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider


class ProviderUnavailable(ProviderError):
    """The provider cannot be used here: no credentials, SDK or bubblewrap.

    The message says how to enable it.
    """


class AuthenticationError(ProviderError):
    """The provider rejected the credentials."""


class RateLimitError(ProviderError):
    """The provider asked us to slow down; ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, provider: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, provider=provider)
        self.retry_after = retry_after


class SandboxNotFoundError(SandboxError):
    """No sandbox with that id exists (any more)."""


class UnsupportedOperation(SandboxError):
    """The provider lacks a capability; never faked, always said."""

    def __init__(self, provider: str, capability: str, hint: str = "") -> None:
        message = f"provider {provider!r} does not support {capability}"
        super().__init__(f"{message}: {hint}" if hint else message)
        self.provider = provider
        self.capability = capability


class ToolchainMissing(SandboxError):
    """The sandbox lacks the compiler or interpreter a language needs."""

    def __init__(self, language: str, tool: str, hint: str = "", *, reason: str = "is not installed in the sandbox") -> None:
        message = f"cannot run {language}: {tool!r} {reason}"
        super().__init__(f"{message}; to install it: {hint}" if hint else message)
        self.language = language
        self.tool = tool


class CassetteError(SandboxError):
    """A cassette could not be read, written or matched."""


class CommandFailed(SandboxError):
    """Raised by ``ExecutionResult.check()``; carries the whole result."""

    def __init__(self, result: ExecutionResult) -> None:
        self.result = result
        super().__init__(result.describe())


class SetupFailed(CommandFailed):
    """A setup command of a new sandbox failed, and the sandbox was destroyed.

    The user's own command failed, not the provider: it is never retried and
    never failed over (another provider would run the same command).
    """

    def __init__(self, result: ExecutionResult, provider: str) -> None:
        self.result = result
        self.provider = provider
        SandboxError.__init__(self, f"setup command failed in a new {provider} sandbox:\n{result.describe()}")


class SharedHostNetworkWarning(UserWarning):
    """A networked local sandbox shares the host's network: its own could not be made here.

    Its code can then reach the host's loopback services and abstract sockets.
    The message says why (slirp4netns missing, /dev/net/tun closed to this user).
    """
