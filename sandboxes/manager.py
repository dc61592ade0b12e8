"""The provider registry, auto-detection of the default, resilience and failover.

Every provider the Manager hands out is its engine over a ``ResilientDriver``:
its calls go through the Manager's ``RetryPolicy`` and that provider's own
``CircuitBreaker``. A cloud provider's is also behind a ``GovernedDriver``:
its creations wait for the ``Governor`` that every process on the machine
shares (its limits, and its answers to a provider's "slow down"). While a
run keeps a ledger or a trace (``meter``), a ``MeteredDriver`` outside them
counts each sandbox's seconds and cost and refuses creations past the
budget. Creation goes budget -> governor -> retry -> circuit breaker ->
failover to the ``fallback`` providers, on infrastructure errors only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import budget, specs
from .budget import Ledger
from .errors import ProviderError, ProviderUnavailable
from .governed import GovernedDriver
from .governor import LIMIT_FIELDS, Governor, Limits
from .metered import MeteredDriver
from .models import SandboxConfig, SandboxInfo
from .provider import SandboxProvider
from .resilience import CircuitBreaker, RetryPolicy, breaker_options
from .resilient import ResilientDriver
from .trace import Trace

log = logging.getLogger("sandboxes.resilience")
DEFAULT_PROVIDER_VARIABLE = "SANDBOXES_PROVIDER"
"""The default provider of this process: what ``Sandbox.create()`` uses when no provider is named."""
MAX_CONCURRENCY_VARIABLE = "SANDBOXES_MAX_CONCURRENCY"
"""Sandboxes alive at once on each cloud provider, for every process here (``limits={"alive": N}``)."""
ALL_CLOUDS = "*"


def has_credentials(name: str) -> bool:
    """Whether the usual credentials of a provider are present (local always has them)."""
    return specs.spec(name).has_credentials()


def provider_class(name: str) -> type[SandboxProvider]:
    """The class of a provider by name (``LocalProvider``...); ProviderUnavailable when it cannot load."""
    return specs.provider_class(name)


class Manager:
    """Holds provider instances by name, chooses one when none is named, and guards their calls."""

    def __init__(
        self,
        providers: Iterable[SandboxProvider] | Mapping[str, SandboxProvider] | None = None,
        default_provider: str | None = None,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        retry: RetryPolicy | Mapping[str, Any] | bool | None = None,
        circuit_breaker: Mapping[str, Any] | None = None,
        limits: Mapping[str, Any] | None = None,
    ) -> None:
        self.providers: dict[str, SandboxProvider] = {}
        if isinstance(providers, Mapping):
            self.providers.update(providers)
        else:
            for provider in providers or ():
                self.providers[provider.name] = provider
        self.registered = set(self.providers)  # given, not built on first use
        self.default_provider = default_provider
        self.provider_options: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (provider_options or {}).items()}
        self.retry = RetryPolicy.from_options(retry)
        self.circuit_options = breaker_options(circuit_breaker)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.limit_options: dict[str, dict[str, Any]] = {}  # provider name (or "*": every cloud) -> limits
        self.governors: dict[str, Governor] = {}
        self.prices: dict[str, float] = {}  # USD per sandbox-second by provider, over the table (sandboxes.budget)
        self.ledger: Ledger | None = None
        self.trace: Trace | None = None
        self._guarded: dict[str, tuple[SandboxProvider, SandboxProvider]] = {}  # name -> (raw, guarded)
        # Providers replaced by configure/register: sandboxes made earlier may still use
        # them, so they are closed with the manager (aclose, sandboxes.session()), not at once.
        self.retired: list[SandboxProvider] = []
        if limits:
            self.set_limits(limits)

    def register(self, provider: SandboxProvider, name: str | None = None) -> None:
        self.retire(name or provider.name)
        self.providers[name or provider.name] = provider
        self.registered.add(name or provider.name)

    def retire(self, name: str) -> None:
        """Drop the provider of that name (it is rebuilt, or replaced); it is closed with the manager."""
        old = self.providers.pop(name, None)
        if old is not None:
            self.retired.append(old)

    def set_resilience(self, *, retry: RetryPolicy | Mapping[str, Any] | bool | None = None, circuit_breaker: Mapping[str, Any] | None = None) -> None:
        """New retry or circuit settings, for what is created from now on (breakers start closed)."""
        if retry is not None:
            self.retry = RetryPolicy.from_options(retry)
        if circuit_breaker is not None:
            self.circuit_options = breaker_options(circuit_breaker)
            self.breakers.clear()
        self._guarded.clear()

    def set_limits(self, limits: Mapping[str, Any]) -> None:
        """``{"alive": 6}`` for every cloud provider, ``{"e2b": {"alive": 6}}`` for one; for creations from now on.

        The fields are ``Limits``': ``alive``, ``creating``, ``per_second``, ``acquire_timeout``.
        Every process that shares the governor should give the same limits.
        """
        if not isinstance(limits, Mapping):
            raise TypeError(f"limits must be a dict, such as {{'alive': 6}} or {{'e2b': {{'alive': 6}}}}, not {type(limits).__name__}")
        changes: dict[str, dict[str, Any]] = {}
        for key, value in limits.items():
            if key in LIMIT_FIELDS:
                changes.setdefault(ALL_CLOUDS, {})[key] = value
            elif isinstance(value, Mapping):
                changes.setdefault(self._known(key), {}).update(value)
            else:
                raise TypeError(f"unknown limit {key!r}: give {', '.join(LIMIT_FIELDS)}, or a provider's name with a dict of them")
        for name, fields in changes.items():
            Limits().changed(fields)  # checked now, not at the first creation
            self.limit_options.setdefault(name, {}).update(fields)
        for governor in self.governors.values():
            governor.close()
        self.governors.clear()
        self._guarded.clear()

    def limits(self, name: str) -> Limits | None:
        """The limits a provider is governed by (the spec table's, $SANDBOXES_MAX_CONCURRENCY, then
        ``set_limits``); None: not governed (local, and a provider outside the table, unless limits name it)."""
        entry = specs.spec(name) if specs.known(name) else None
        cloud = entry is not None and entry.cloud  # a provider registered under a name of its own: only if named
        changes: dict[str, Any] = {}
        if cloud:
            variable = os.environ.get(MAX_CONCURRENCY_VARIABLE)
            if variable:
                try:
                    changes["alive"] = int(variable)
                except ValueError:
                    raise ValueError(f"${MAX_CONCURRENCY_VARIABLE}={variable!r} is not a whole number of sandboxes") from None
            changes.update(self.limit_options.get(ALL_CLOUDS, {}))
        changes.update(self.limit_options.get(name, {}))
        if not cloud and not changes:
            return None
        return (entry.limits if entry is not None else Limits()).changed(changes)

    def meter(self, ledger: Ledger | None = None, trace: Trace | None = None) -> None:
        """Count what the sandboxes created from now on cost in ``ledger`` (and keep its budget); write their lifecycle to ``trace``."""
        self.ledger, self.trace = ledger, trace
        self._guarded.clear()

    def set_prices(self, prices: Mapping[str, float]) -> None:
        """USD per sandbox-second by provider, over the published table (``sandboxes.budget``)."""
        if not isinstance(prices, Mapping):
            raise TypeError(f"prices must be a dict of USD per sandbox-second by provider, such as {{'e2b': 0.00003}}, not {type(prices).__name__}")
        budget.prices(prices)  # a ValueError naming a bad one, now rather than at a creation
        self.prices.update({self._known(name): float(value) for name, value in prices.items()})

    def governor(self, name: str) -> Governor | None:
        """The governor of a provider in this process (one per name), or None when it is not governed."""
        if name not in self.governors:
            limits = self.limits(name)
            if limits is None:
                return None
            self.governors[name] = Governor(name, limits)
        return self.governors[name]

    def breaker(self, name: str) -> CircuitBreaker:
        """The circuit breaker of one provider, shared by every sandbox on it."""
        if name not in self.breakers:
            self.breakers[name] = CircuitBreaker(name, **self.circuit_options)
        return self.breakers[name]

    def get_provider(self, name: str) -> SandboxProvider:
        """The provider by name, behind the retry policy and its circuit breaker.

        Built from its name (and ``provider_options``) on first use unless an
        instance was registered; ``ProviderUnavailable`` when it cannot be used.
        """
        if name not in self.providers:
            cls = provider_class(name)
            self.providers[name] = cls(**self.provider_options.get(name, {}))
        raw = self.providers[name]
        if isinstance(raw.driver, ResilientDriver | GovernedDriver | MeteredDriver):
            return raw
        known = self._guarded.get(name)
        if known is None or known[0] is not raw:
            governor = self.governor(name)
            driver: Any = ResilientDriver(raw.driver, self.retry, self.breaker(name), governed=governor is not None, trace=self.trace)
            if governor is not None:
                driver = GovernedDriver(driver, governor, self.trace)
            if self.ledger is not None or self.trace is not None:
                driver = MeteredDriver(driver, self.ledger, self.trace)
            known = self._guarded[name] = (raw, raw.with_driver(driver))
        return known[1]

    def resolve(self, name: str | None = None) -> str:
        """Explicit name, $SANDBOXES_PROVIDER, the configured default, a registered provider,
        a cloud with credentials (in the spec table's order), else local."""
        if name:
            return self._known(name)
        from_environment = os.environ.get(DEFAULT_PROVIDER_VARIABLE)
        if from_environment:
            if from_environment not in specs.specs() and from_environment not in self.providers:
                raise ValueError(
                    f"${DEFAULT_PROVIDER_VARIABLE}={from_environment!r} is not a provider: it names the one default provider, "
                    f"one of {', '.join(specs.names())} (the pytest plugin's list of providers is $SANDBOXES_TEST_PROVIDERS)"
                )
            return from_environment
        if self.default_provider:
            return self._known(self.default_provider)
        order = specs.names()
        if self.registered:  # given to this Manager: they win over credentials found around
            return sorted(self.registered, key=lambda n: order.index(n) if n in order else len(order))[0]
        for cloud in self.credentialed():
            return cloud
        return "local"

    def credentialed(self) -> list[str]:
        """The cloud providers whose credentials and SDK are here, in the spec table's order."""
        found = []
        for cloud in specs.cloud_names():
            if has_credentials(cloud):
                try:
                    provider_class(cloud)
                except ProviderUnavailable:
                    continue
                found.append(cloud)
        return found

    def candidates(self, provider: str | None = None, fallback: Sequence[str] | bool | None = None) -> list[str]:
        """The providers a creation tries, in order.

        ``fallback=True`` means the cloud providers whose credentials are here,
        in the spec table's order, whichever are built already; never local
        unless named, since falling back to it changes the isolation.
        """
        first = self.resolve(provider)
        if fallback is True:
            return [first] + [n for n in self.credentialed() if n != first]
        if isinstance(fallback, str):
            fallback = [fallback]
        named = [self._known(n) for n in (fallback or ())]
        return [first, *[n for n in dict.fromkeys(named) if n != first]]

    def _known(self, name: str) -> str:
        """A provider's name, checked: in the spec table, or registered with this manager."""
        if not isinstance(name, str):
            raise TypeError(f"a provider is named by a string, not {type(name).__name__} ({name!r})")
        if name not in self.providers:
            specs.spec(name)  # a ValueError naming the known ones
        return name

    async def create_sandbox(
        self,
        config: SandboxConfig,
        provider: str | None = None,
        fallback: Sequence[str] | bool | None = None,
    ) -> tuple[SandboxProvider, SandboxInfo]:
        """Create on the chosen provider; on an infrastructure error, on the next fallback.

        Each provider first retries per the policy (its circuit breaker failing
        fast when it is down). Only ``ProviderError`` fails over: bad input,
        an unsupported option or a failing setup command would fail the same
        way anywhere, so they are raised at once.
        """
        candidates = self.candidates(provider, fallback)
        errors: list[str] = []
        for name in candidates:
            try:
                instance = self.get_provider(name)
                return instance, await instance.create_sandbox(config)
            except ProviderError as error:
                errors.append(f"{name}: {error}")
                if name == candidates[-1]:
                    if len(candidates) == 1:
                        raise
                    raise type(error)("every provider failed to create a sandbox:\n  " + "\n  ".join(errors), provider=name) from error
                log.warning("creating a sandbox on %s failed (%s: %s); failing over", name, type(error).__name__, error)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close every provider this manager built or was given, and those it replaced."""
        retired, self.retired = self.retired, []
        for provider in [*self.providers.values(), *retired]:
            await provider.aclose()


_current: Manager | None = None


def get_manager() -> Manager:
    """The process's Manager (providers, default, resilience), made on first use."""
    global _current
    if _current is None:
        _current = Manager()
    return _current


def current_manager() -> Manager | None:
    """The process's Manager if one was made, without making one."""
    return _current


def reset_manager() -> None:
    """Forget the process's Manager: the next use starts afresh (tests, a new configuration).

    It does not close the old one's clients: ``async with sandboxes.session()``
    or ``await get_manager().aclose()`` first does that.
    """
    global _current
    _current = None
