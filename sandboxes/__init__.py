"""Run untrusted, often AI-written, code in sandboxes: local (bubblewrap) or cloud."""

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
from .judging import Judgement, Verdict, judge
from .manager import Manager, get_manager, reset_manager
from .models import Capabilities, ExecutionResult, OutputChunk, SandboxConfig, SandboxInfo
from .passk import pass_at_k, summarize
from .provider import SandboxProvider
from .resilience import CircuitBreaker, CircuitOpenError, RetryPolicy
from .sandbox import Sandbox, run, run_many, session

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
