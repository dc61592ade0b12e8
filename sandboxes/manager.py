"""The provider registry, auto-detection of the default, and failover at creation."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ProviderError, ProviderUnavailable
from .models import SandboxConfig, SandboxInfo
from .provider import SandboxProvider

# name -> (module, class); cloud modules import their SDK lazily.
PROVIDERS: dict[str, tuple[str, str]] = {
    "local": ("sandboxes.providers.local", "LocalProvider"),
    "e2b": ("sandboxes.providers.e2b", "E2BProvider"),
    "modal": ("sandboxes.providers.modal", "ModalProvider"),
    "daytona": ("sandboxes.providers.daytona", "DaytonaProvider"),
    "cloudflare": ("sandboxes.providers.cloudflare", "CloudflareProvider"),
}
CLOUD_ORDER = ("e2b", "modal", "daytona", "cloudflare")


def has_credentials(name: str) -> bool:
    """Whether the usual credentials of a cloud provider are present."""
    env = os.environ
    if name == "e2b":
        return bool(env.get("E2B_API_KEY"))
    if name == "modal":
        return bool(env.get("MODAL_TOKEN_ID")) or Path(env.get("MODAL_CONFIG_PATH", "~/.modal.toml")).expanduser().is_file()
    if name == "daytona":
        return bool(env.get("DAYTONA_API_KEY"))
    if name == "cloudflare":
        return bool(env.get("CLOUDFLARE_SANDBOX_BASE_URL") and env.get("CLOUDFLARE_API_TOKEN"))
    return name == "local"


def provider_class(name: str) -> type[SandboxProvider]:
    """The class of a provider by name; ProviderUnavailable when it cannot load."""
    if name not in PROVIDERS:
        raise ValueError(f"unknown provider {name!r}: choose one of {', '.join(PROVIDERS)}")
    module_name, class_name = PROVIDERS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise ProviderUnavailable(
                f"the {name} provider is not part of this version of pytest-sandboxes", provider=name
            ) from None
        raise ProviderUnavailable(
            f"the {name} provider needs the {error.name!r} package: pip install 'pytest-sandboxes[{name}]'", provider=name
        ) from None
    cls: type[SandboxProvider] = getattr(module, class_name)
    return cls


class Manager:
    """Holds provider instances by name and chooses one when none is named."""

    def __init__(
        self,
        providers: Iterable[SandboxProvider] | Mapping[str, SandboxProvider] | None = None,
        default_provider: str | None = None,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.providers: dict[str, SandboxProvider] = {}
        if isinstance(providers, Mapping):
            self.providers.update(providers)
        else:
            for provider in providers or ():
                self.providers[provider.name] = provider
        self.default_provider = default_provider
        self.provider_options: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (provider_options or {}).items()}
        self._factories: dict[str, Callable[[], SandboxProvider]] = {}

    def register(self, provider: SandboxProvider, name: str | None = None) -> None:
        self.providers[name or provider.name] = provider

    def get_provider(self, name: str) -> SandboxProvider:
        """The registered instance, or a new one built from the name."""
        if name not in self.providers:
            cls = provider_class(name)
            self.providers[name] = cls(**self.provider_options.get(name, {}))
        return self.providers[name]

    def resolve(self, name: str | None = None) -> str:
        """Explicit name, SANDBOXES_PROVIDER, the default, a cloud with credentials, else local."""
        if name:
            return name
        chosen = os.environ.get("SANDBOXES_PROVIDER") or self.default_provider
        if chosen:
            return chosen
        for cloud in CLOUD_ORDER:
            if cloud in self.providers:
                return cloud
            if has_credentials(cloud):
                try:
                    provider_class(cloud)
                except ProviderUnavailable:
                    continue
                return cloud
        return "local"

    async def create_sandbox(
        self,
        config: SandboxConfig,
        provider: str | None = None,
        fallback: Sequence[str] | bool | None = None,
    ) -> tuple[SandboxProvider, SandboxInfo]:
        """Create on the chosen provider, failing over on infrastructure errors only."""
        first = self.resolve(provider)
        if fallback is True:
            candidates = [first] + [n for n in self.providers if n != first]
        else:
            candidates = [first, *[n for n in (fallback or ()) if n != first]]
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
                    raise type(error)(
                        "every provider failed to create a sandbox:\n  " + "\n  ".join(errors), provider=name
                    ) from error
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
