"""Run untrusted, often AI-written, code in sandboxes: local (bubblewrap) or cloud."""

from typing import TYPE_CHECKING, Any

from .errors import (
    AuthenticationError,
    CassetteError,
    CommandFailed,
    ProviderError,
    ProviderUnavailable,
    RateLimitError,
    SandboxError,
    SandboxNotFoundError,
    SetupFailed,
    SharedHostNetworkWarning,
    ToolchainMissing,
    UnsupportedOperation,
)
from .models import Capabilities, ExecutionResult, OutputChunk, SandboxConfig, SandboxInfo

if TYPE_CHECKING:
    from .judging import Judgement, Verdict, judge
    from .manager import Manager, get_manager, reset_manager
    from .passk import pass_at_k, summarize
    from .provider import SandboxProvider
    from .resilience import CircuitBreaker, CircuitOpenError, RetryPolicy
    from .sandbox import Sandbox, run, run_many, session

_LAZY = {
    "Judgement": "judging",
    "Verdict": "judging",
    "judge": "judging",
    "Manager": "manager",
    "get_manager": "manager",
    "reset_manager": "manager",
    "pass_at_k": "passk",
    "summarize": "passk",
    "SandboxProvider": "provider",
    "CircuitBreaker": "resilience",
    "CircuitOpenError": "resilience",
    "RetryPolicy": "resilience",
    "Sandbox": "sandbox",
    "run": "sandbox",
    "run_many": "sandbox",
    "session": "sandbox",
}
"""Names whose modules load at first use, as anyio loads its back-ends: a program that imports one
light module (``sandboxes.specs``, ``sandboxes.models``) does not pay for the engine, the judge and
anyio, some 80 ms at start."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sandboxes' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Capabilities",
    "CassetteError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CommandFailed",
    "ExecutionResult",
    "Judgement",
    "Manager",
    "OutputChunk",
    "ProviderError",
    "ProviderUnavailable",
    "RateLimitError",
    "RetryPolicy",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxProvider",
    "SetupFailed",
    "SharedHostNetworkWarning",
    "ToolchainMissing",
    "UnsupportedOperation",
    "Verdict",
    "get_manager",
    "judge",
    "pass_at_k",
    "reset_manager",
    "run",
    "run_many",
    "session",
    "summarize",
]
