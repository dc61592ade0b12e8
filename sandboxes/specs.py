"""The provider table: one entry per provider, read by everything that needs to know providers.

The manager (which provider, failover order, how to build it), the cassette
scrubber (which credentials to hide), the pytest plugin's hints, ``sandboxes
providers`` and the conformance suite all read ``specs()``. Adding a provider
is one driver and one entry here, or, from another package, a ``ProviderSpec``
published under the ``sandboxes.providers`` entry-point group.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._entry_points import published
from .errors import ProviderUnavailable
from .governor import Limits
from .models import Capabilities

if TYPE_CHECKING:
    from .driver import Driver
    from .provider import SandboxProvider

log = logging.getLogger("sandboxes")
ENTRY_POINT_GROUP = "sandboxes.providers"


@dataclass(frozen=True)
class ProviderSpec:
    """What the library knows about a provider before loading it."""

    name: str
    module: str
    driver: str
    """The driver class's name in ``module``."""
    capabilities: Capabilities
    credentials: Mapping[str, str] = field(default_factory=dict)
    """Driver option -> environment variable it is read from (``{"api_key": "E2B_API_KEY"}``)."""
    required: tuple[str, ...] = ()
    """The variables that must all be set for the provider to count as configured."""
    config_file: tuple[str, str] | None = None
    """(variable naming it, default path) of a credentials file that also counts (Modal's ``~/.modal.toml``)."""
    secret_variables: tuple[str, ...] = ()
    """Variables whose values are scrubbed from cassettes and messages (patterns allowed: ``MODAL_TOKEN_*``)."""
    credential_hint: str = ""
    extra: str | None = None
    """The pip extra that installs its SDK: ``pip install 'pytest-sandboxes[<extra>]'``."""
    limits: Limits = field(default_factory=Limits)
    """Its published limits, kept by the governor across every process here (``sandboxes.governor``)."""
    cloud: bool = True

    @property
    def class_name(self) -> str:
        return self.driver.removesuffix("Driver") + "Provider"

    @property
    def install_hint(self) -> str:
        return f"pip install 'pytest-sandboxes[{self.extra}]'" if self.extra else ""

    def has_credentials(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether its credentials are present (nothing is imported or contacted)."""
        env = os.environ if environ is None else environ
        if not self.cloud:
            return True
        if self.required and all(env.get(name) for name in self.required):
            return True
        if self.config_file is not None:
            variable, default = self.config_file
            return Path(env.get(variable) or default).expanduser().is_file()
        return False

    def options_from_environment(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The driver options its credential variables give."""
        env = os.environ if environ is None else environ
        return {option: env[variable] for option, variable in self.credentials.items() if env.get(variable)}

    def driver_class(self) -> type[Driver]:
        """The driver class, imported now; ``ProviderUnavailable`` says what to install when it cannot be."""
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError as error:
            if error.name == self.module:
                raise ProviderUnavailable(f"the {self.name} provider is not part of this version of pytest-sandboxes", provider=self.name) from None
            how = self.install_hint or f"pip install {error.name}"
            raise ProviderUnavailable(f"the {self.name} provider needs the {error.name!r} package: {how}", provider=self.name) from None
        cls: type[Driver] = getattr(module, self.driver)
        return cls


_ALL = Capabilities(streaming=True, stdin=True, files=True, background_processes=True, network_control=True, native_labels=True, cross_process_reuse=True)

BUILTIN: tuple[ProviderSpec, ...] = (
    ProviderSpec(
        "local",
        "sandboxes.providers.local.driver",
        "LocalDriver",
        Capabilities(**{**_ALL.as_dict(), "tree_download": True, "files_upload": True, "oom_reporting": True, "warm_python": True}),
        cloud=False,
    ),
    ProviderSpec(
        "e2b",
        "sandboxes.providers.e2b",
        "E2BDriver",
        _ALL,
        credentials={"api_key": "E2B_API_KEY"},
        required=("E2B_API_KEY",),
        secret_variables=("E2B_API_KEY", "E2B_ACCESS_TOKEN"),
        credential_hint="set E2B_API_KEY (https://e2b.dev/dashboard?tab=keys)",
        extra="e2b",
        limits=Limits(alive=20),  # the base plan's concurrent sandboxes; a 429 past them
    ),
    ProviderSpec(
        "modal",
        "sandboxes.providers.modal",
        "ModalDriver",
        _ALL,
        credentials={"token_id": "MODAL_TOKEN_ID", "token_secret": "MODAL_TOKEN_SECRET"},
        required=("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"),
        config_file=("MODAL_CONFIG_PATH", "~/.modal.toml"),
        secret_variables=("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_TOKEN_*"),
        credential_hint="set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run `modal token new`",
        extra="modal",
        limits=Limits(per_second=5.0),  # sandbox creations per second; RESOURCE_EXHAUSTED past them
    ),
    ProviderSpec(
        "daytona",
        "sandboxes.providers.daytona",
        "DaytonaDriver",
        Capabilities(**{**_ALL.as_dict(), "streaming": False, "stdin": False, "merges_stderr": True, "files_upload": True}),
        credentials={"api_key": "DAYTONA_API_KEY"},
        required=("DAYTONA_API_KEY",),
        secret_variables=("DAYTONA_API_KEY",),
        credential_hint="set DAYTONA_API_KEY (https://app.daytona.io/dashboard/keys)",
        extra="daytona",
        limits=Limits(alive=16),  # resources per organisation: "Sandbox resource limit reached (16)"
    ),
    ProviderSpec(
        "cloudflare",
        "sandboxes.providers.cloudflare",
        "CloudflareDriver",
        Capabilities(streaming=True, files=True, cross_process_reuse=True),
        credentials={"base_url": "CLOUDFLARE_SANDBOX_BASE_URL", "api_token": "CLOUDFLARE_API_TOKEN"},
        required=("CLOUDFLARE_SANDBOX_BASE_URL", "CLOUDFLARE_API_TOKEN"),
        secret_variables=("CLOUDFLARE_API_TOKEN",),
        credential_hint="set CLOUDFLARE_SANDBOX_BASE_URL (your Sandbox Bridge Worker) and CLOUDFLARE_API_TOKEN",
    ),
)


@functools.cache
def specs() -> dict[str, ProviderSpec]:
    """Every provider by name: the built-in ones in failover order, then those other packages publish."""
    table = {spec.name: spec for spec in BUILTIN}
    for where, spec in published(ENTRY_POINT_GROUP, ProviderSpec):
        if spec.name in table:
            log.warning("provider %r from entry point %s is already defined; ignored", spec.name, where)
            continue
        table[spec.name] = spec
    return table


def spec(name: str) -> ProviderSpec:
    """The spec of one provider; a ValueError that lists the known ones otherwise."""
    for builtin in BUILTIN:  # a published spec never replaces a built-in one: no scan of entry points for these
        if builtin.name == name:
            return builtin
    table = specs()
    if name not in table:
        raise ValueError(f"unknown provider {name!r}: choose one of {', '.join(table)}")
    return table[name]


def known(name: str) -> bool:
    """Whether ``name`` is a provider (a built-in one is known without a scan of entry points)."""
    try:
        spec(name)
    except ValueError:
        return False
    return True


def names() -> list[str]:
    return list(specs())


def cloud_names() -> list[str]:
    """The cloud providers, in failover order."""
    return [spec.name for spec in specs().values() if spec.cloud]


def secret_variables() -> tuple[str, ...]:
    """Every provider's credential variables (patterns allowed)."""
    return tuple(dict.fromkeys(name for spec in specs().values() for name in spec.secret_variables))


@functools.cache
def provider_class(name: str) -> type[SandboxProvider]:
    """``LocalProvider``, ``E2BProvider``...: the engine bound to one provider's driver.

    ``E2BProvider(api_key=...)`` builds the driver with those options (credentials
    missing from them are read from the spec's variables) under the engine.
    """
    from .provider import SandboxProvider

    entry = spec(name)
    driver_class = entry.driver_class()
    attributes: dict[str, Any] = {"spec": entry, "driver_class": driver_class, "__doc__": driver_class.__doc__, "__module__": "sandboxes.providers"}
    cls: type[SandboxProvider] = type(entry.class_name, (SandboxProvider,), attributes)
    return cls
