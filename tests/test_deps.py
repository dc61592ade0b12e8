"""run_code(deps=True) on the local provider: installed with network, run without it.

PyPI and npm are reachable from the test machine; Go's proxy and crates.io
are not, so those are checked with local or dependency-free manifests and a
clear failure.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from sandboxes import SandboxConfig, SandboxInfo, ToolchainMissing, sync
from sandboxes import languages as langs
from sandboxes.providers.local import LocalProvider
from sandboxes.sandbox import Sandbox as AsyncSandbox

OWNER = {"created-by": "sandboxes-cli", "host": "test-host", "sandboxes_run": "run-1", "project": "mine"}

# Tries the network from inside the program: an address, so DNS is not the only thing in the way.
PYTHON_PROBE = """import socket, sys
import six
print("six", six.__version__)
try:
    socket.create_connection((sys.argv[1], 443), timeout=5).close()
    print("network: yes")
except OSError as error:
    print("network: no", type(error).__name__)
"""

NODE_PROBE = """const isOdd = require('is-odd');
console.log('is-odd', isOdd(3));
require('net').connect({host: process.argv[2], port: 443, timeout: 5000})
  .on('connect', () => { console.log('network: yes'); process.exit(0); })
  .on('error', (e) => { console.log('network: no', e.code); })
  .on('timeout', () => { console.log('network: no timeout'); process.exit(0); });
"""


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> LocalProvider:
    return LocalProvider(state_dir=tmp_path_factory.mktemp("deps-state"))


@pytest.fixture(scope="module")
def offline(provider: LocalProvider) -> Iterator[sync.Sandbox]:
    """The program's sandbox: no network (the local provider's default)."""
    info = sync.portal().call(provider.create_sandbox, SandboxConfig(labels=OWNER))
    sandbox = sync.Sandbox(AsyncSandbox(provider, info))
    assert sandbox.info.metadata["network"] is False
    yield sandbox
    sandbox.destroy()


def _address(host: str) -> str:
    try:
        return socket.getaddrinfo(host, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError:
        pytest.fail(f"{host} does not resolve on the host: the deps tests need PyPI and npm reachable")


@contextmanager
def creations(provider: LocalProvider) -> Iterator[list[SandboxConfig]]:
    """The configs of the sandboxes created meanwhile (the real creation runs)."""
    seen: list[SandboxConfig] = []
    original = provider.create_sandbox

    async def recording(config: SandboxConfig) -> SandboxInfo:
        seen.append(config)
        return await original(config)

    provider.create_sandbox = recording  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del provider.create_sandbox


def _only_the_program_sandbox(provider: LocalProvider, offline: sync.Sandbox) -> None:
    left = sync.portal().call(provider.list_sandboxes)
    assert [info.id for info in left] == [offline.id], "the install helper sandbox was not destroyed"


def test_python_requirements_installed_elsewhere_and_the_program_has_no_network(provider: LocalProvider, offline: sync.Sandbox) -> None:
    assert langs.installs_elsewhere(offline.async_sandbox)
    address = _address("pypi.org")
    result = offline.run_code(PYTHON_PROBE, "python", files={"requirements.txt": "six==1.16.0\n"}, args=[address], deps=True, timeout=120)
    assert result.exit_code == 0, result.describe()
    assert result.stdout.startswith("six 1.16.0\nnetwork: no "), result.stdout
    _only_the_program_sandbox(provider, offline)


def test_npm_package_installed_elsewhere_and_the_program_has_no_network(provider: LocalProvider, offline: sync.Sandbox) -> None:
    address = _address("registry.npmjs.org")
    package = '{"name": "app", "version": "1.0.0", "dependencies": {"is-odd": "3.0.1"}}'
    result = offline.run_code(NODE_PROBE, "javascript", files={"package.json": package}, args=[address], deps=True, timeout=120)
    assert result.exit_code == 0, result.describe()
    assert result.stdout.startswith("is-odd true\nnetwork: no "), result.stdout
    _only_the_program_sandbox(provider, offline)


def test_the_helper_has_network_and_the_owner_labels_only(provider: LocalProvider, offline: sync.Sandbox) -> None:
    # The install step itself reports what it saw: network on, labels that `gc` and the plugin's sweep find.
    script = 'import os, socket, sys\nsocket.create_connection((sys.argv[1], 443), timeout=10).close()\nprint("helper online")\n'
    address = _address("pypi.org")
    steps = langs.Deps(manifests=("probe.txt",), install=(("python3", "probe.py", address),))
    probe = langs.Language(
        name="probe", source="main.py", install_hint="-", deps=(steps,), recipes=(langs.Recipe(requires=("python3",), run=("python3", "{src}")),)
    )
    with creations(provider) as created:
        prepared = sync.portal().call(
            lambda: langs.prepare_code(offline.async_sandbox, "print('ran offline')", probe, files={"probe.txt": "", "probe.py": script}, deps=True, timeout=60)
        )
    assert prepared.failed is None, prepared.failed and prepared.failed.describe()
    assert [config.network for config in created] == [True]
    assert created[0].labels == {"created-by": "sandboxes-cli", "host": "test-host", "sandboxes_run": "run-1", "sandboxes-role": "deps-install"}
    assert offline.execute(["python3", "main.py"], cwd=prepared.directory).stdout == "ran offline\n"
    sync.portal().call(langs.cleanup, offline.async_sandbox, prepared)
    _only_the_program_sandbox(provider, offline)


def test_go_module_cache_travels_and_the_build_is_offline(provider: LocalProvider, offline: sync.Sandbox) -> None:
    files = {
        "go.mod": "module example.com/app\n\ngo 1.18\n\nrequire example.com/greet v0.0.0\n\nreplace example.com/greet => ./greet\n",
        "greet/go.mod": "module example.com/greet\n\ngo 1.18\n",
        "greet/greet.go": 'package greet\n\nfunc Hello(n string) string { return "hello " + n }\n',
    }
    code = 'package main\n\nimport (\n\t"fmt"\n\t"os"\n\t"example.com/greet"\n)\n\nfunc main() { fmt.Println(greet.Hello("go"), os.Getenv("GOPROXY")) }\n'
    result = offline.run_code(code, "go", files=files, deps=True, timeout=120)
    assert (result.exit_code, result.stdout) == (0, "hello go off\n"), result.describe()
    assert offline.execute("ls /tmp/sandboxes-run").stdout == ""  # the module cache was removable
    _only_the_program_sandbox(provider, offline)


def test_go_module_from_an_unreachable_proxy_is_a_clear_failed_result(provider: LocalProvider, offline: sync.Sandbox) -> None:
    code = 'package main\n\nimport (\n\t"fmt"\n\t"example.invalid/nothere"\n)\n\nfunc main() { fmt.Println(nothere.X) }\n'
    result = offline.run_code(code, "go", files={"go.mod": "module example.com/app\n\ngo 1.18\n"}, deps=True, timeout=120)
    assert not result.success
    assert result.command == ["go", "mod", "tidy"]  # the install step failed, and says where it looked
    assert "example.invalid/nothere" in result.stderr and "proxy.golang.org" in result.stderr, result.describe()
    _only_the_program_sandbox(provider, offline)


def test_cargo_manifest_fetched_elsewhere_and_built_offline(provider: LocalProvider, offline: sync.Sandbox) -> None:
    manifest = '[package]\nname = "hello-deps"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n'
    code = 'fn main() { println!("cargo {}", std::env::var("CARGO_NET_OFFLINE").unwrap_or_default()); }\n'
    try:
        result = offline.run_code(code, "rust", files={"Cargo.toml": manifest}, deps=True, timeout=180)
    except ToolchainMissing as missing:  # rustup under /root, for an ordinary user
        pytest.skip(str(missing))
    assert (result.exit_code, result.stdout) == (0, "cargo true\n"), result.describe()
    _only_the_program_sandbox(provider, offline)


def test_with_network_on_the_install_runs_in_place(provider: LocalProvider) -> None:
    info = sync.portal().call(provider.create_sandbox, SandboxConfig(network=True))
    online = sync.Sandbox(AsyncSandbox(provider, info))
    try:
        assert not langs.installs_elsewhere(online.async_sandbox)
        package = '{"name": "app", "version": "1.0.0", "dependencies": {"is-odd": "3.0.1"}}'
        with creations(provider) as created:
            result = online.run_code("console.log(require('is-odd')(4))", "node", files={"package.json": package}, deps=True, timeout=120)
        assert (result.exit_code, result.stdout) == (0, "false\n"), result.describe()
        assert created == []  # no helper needed
    finally:
        online.destroy()


def test_a_replayed_sandbox_keeps_its_network_flag(provider: LocalProvider, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Where deps install depends on the sandbox's network, so a cassette records it and replays it."""
    from sandboxes.cassette import Cassette, cassette_provider

    path = tmp_path_factory.mktemp("cassette") / "network.yaml"

    async def record_then_replay() -> None:
        recording = cassette_provider(provider, Cassette(path, "all", provider="local"))
        info = await recording.create_sandbox(SandboxConfig())
        await recording.destroy_sandbox(info.id)
        recording.cassette.save()
        replayed = await cassette_provider(None, Cassette(path, "none", provider="local")).create_sandbox(SandboxConfig())
        assert replayed.metadata == {"network": False}
        assert langs.installs_elsewhere(AsyncSandbox(provider, replayed))

    sync.portal().call(record_then_replay)
