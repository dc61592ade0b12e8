"""run_code in every language, through one shared local sandbox (fast, xdist-friendly)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandboxes import ExecutionResult, SandboxConfig, ToolchainMissing, sync
from sandboxes import languages as langs
from sandboxes.providers.local import LocalProvider
from sandboxes.providers.local.driver import LocalDriver
from sandboxes.sandbox import Sandbox as AsyncSandbox

from ._programs import BROKEN, BROKEN_MARK, ECHO, ECHO_ARGS, ECHO_OUT, ECHO_STDIN, LANGUAGES, PAYLOAD, program


def run_or_skip(sandbox: sync.Sandbox, code: str, language: str, **options: Any) -> ExecutionResult:
    """``run_code``, skipped with the reason when this machine's toolchain cannot run here
    (rustup under /root, for an ordinary user)."""
    try:
        return sandbox.run_code(code, language, **options)
    except ToolchainMissing as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sync.Sandbox]:
    """One sandbox for the module: each run_code gets its own directory in it."""
    provider = LocalProvider(state_dir=tmp_path_factory.mktemp("languages-state"))
    info = sync.portal().call(provider.create_sandbox, SandboxConfig(labels={"test": "languages"}))
    sandbox = sync.Sandbox(AsyncSandbox(provider, info))
    yield sandbox
    sandbox.destroy()


@pytest.mark.parametrize("language", LANGUAGES)
def test_prints_quoting_hostile_text_byte_exact(shared: sync.Sandbox, language: str) -> None:
    result = run_or_skip(shared, program(language), language, timeout=120)
    assert result.stderr == "" or language == "java"
    assert (result.exit_code, result.stdout) == (0, PAYLOAD)


@pytest.mark.parametrize("language", LANGUAGES)
def test_stdin_args_and_exit_code(shared: sync.Sandbox, language: str) -> None:
    result = run_or_skip(shared, ECHO[language], language, stdin=ECHO_STDIN, args=ECHO_ARGS, timeout=120)
    assert (result.exit_code, result.stdout) == (7, ECHO_OUT), result.stderr


@pytest.mark.parametrize("language", sorted(BROKEN))
def test_compile_error_is_a_failed_result_with_the_compiler_output(shared: sync.Sandbox, language: str) -> None:
    result = run_or_skip(shared, BROKEN[language], language, timeout=120)
    assert result.exit_code != 0
    assert not result.success
    assert BROKEN_MARK[language] in result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip()


def test_aliases_and_extensions_resolve() -> None:
    assert langs.get_language("node").name == "javascript"
    assert langs.get_language("SH").name == "bash"
    assert langs.get_language("c++").name == "cpp"
    assert langs.language_for_file("x/Main.java").name == "java"
    assert langs.language_for_file("app.mts").name == "typescript"


def test_unknown_language_lists_the_known_ones(shared: sync.Sandbox) -> None:
    with pytest.raises(ValueError, match=r"unknown language 'cobol'.*python.*javascript.*ruby"):
        shared.run_code("DISPLAY 'x'.", "cobol")
    with pytest.raises(ValueError, match="--lang"):
        langs.language_for_file("notes.txt")


def test_missing_toolchain_names_the_tool_and_how_to_install(shared: sync.Sandbox) -> None:
    cobol = langs.Language(
        name="cobol", source="main.cob", install_hint="apt-get install gnucobol",
        recipes=(langs.Recipe(requires=("cobc",), build=(("cobc", "-x", "{src}"),), run=("./main",)),),
    )  # fmt: skip
    with pytest.raises(ToolchainMissing, match=r"'cobc' is not installed.*apt-get install gnucobol") as caught:
        sync.portal().call(lambda: langs.prepare_code(shared.async_sandbox, "x", cobol))
    assert (caught.value.language, caught.value.tool) == ("cobol", "cobc")


def test_files_beside_the_source_and_cleanup(shared: sync.Sandbox) -> None:
    code = "print(open('data/input.txt').read().strip()[::-1])\nimport os\nprint(os.getcwd())\n"
    result = shared.run_code(code, "python", files={"data/input.txt": "olleh"})
    assert result.stdout.splitlines()[0] == "hello"
    run_dir = result.stdout.splitlines()[1]
    assert run_dir.startswith(langs.RUN_ROOT + "/")
    assert shared.execute(["test", "-e", run_dir]).exit_code == 0  # kept for a batch...
    for _ in range(langs.CLEANUP_BATCH):
        shared.run_code("pass", "python")
    assert shared.execute(["test", "-e", run_dir]).exit_code == 1  # ...then removed with it
    assert int(shared.execute(["sh", "-c", f"ls {langs.RUN_ROOT} | wc -l"]).stdout) < langs.CLEANUP_BATCH
    with pytest.raises(ValueError, match="relative"):
        shared.run_code("print(1)", "python", files={"../escape": "x"})


def test_source_never_reaches_a_shell(shared: sync.Sandbox) -> None:
    code = 'print("ok")\n# $(touch /tmp/pwned) `touch /tmp/pwned2`\n'
    assert shared.run_code(code, "python").stdout == "ok\n"
    assert shared.execute("ls /tmp/pwned /tmp/pwned2").exit_code != 0


@pytest.mark.filterwarnings("ignore::sandboxes.SharedHostNetworkWarning")  # as an ordinary user here
def test_deps_node_package_json_with_a_local_dependency(shared: sync.Sandbox) -> None:
    files = {
        "package.json": '{"name": "app", "version": "1.0.0", "dependencies": {"greet": "file:./greet"}}',
        "greet/package.json": '{"name": "greet", "version": "1.0.0", "main": "index.js"}',
        "greet/index.js": "module.exports = (n) => `hello ${n}`;\n",
    }
    result = shared.run_code("console.log(require('greet')('deps'))", "node", files=files, deps=True, timeout=120)
    assert (result.exit_code, result.stdout) == (0, "hello deps\n"), result.stderr


@pytest.mark.filterwarnings("ignore::sandboxes.SharedHostNetworkWarning")  # as an ordinary user here
def test_deps_go_mod_with_a_local_module(shared: sync.Sandbox) -> None:
    files = {
        "go.mod": "module example.com/app\n\ngo 1.18\n\nrequire example.com/greet v0.0.0\n\nreplace example.com/greet => ./greet\n",
        "greet/go.mod": "module example.com/greet\n\ngo 1.18\n",
        "greet/greet.go": 'package greet\n\nfunc Hello(n string) string { return "hello " + n }\n',
    }
    code = 'package main\n\nimport (\n\t"fmt"\n\t"example.com/greet"\n)\n\nfunc main() { fmt.Println(greet.Hello("go")) }\n'
    result = shared.run_code(code, "go", files=files, deps=True, timeout=120)
    assert (result.exit_code, result.stdout) == (0, "hello go\n"), result.stderr


def test_timeout_applies_to_the_run(shared: sync.Sandbox) -> None:
    result = shared.run_code("import time\nprint('start', flush=True)\ntime.sleep(30)\n", "python", timeout=1)
    assert result.timed_out and not result.success
    assert result.stdout == "start\n"


RUSTUP_WITHOUT_TOOLCHAIN = (
    '#!/bin/sh\necho "error: rustup could not choose a version of $(basename "$0") to run, because one wasn\'t specified '
    'explicitly, and no default is configured." >&2\nexit 1\n'
)


def test_a_tool_that_is_there_but_does_not_run_is_a_toolchain_missing(tmp_path_factory: pytest.TempPathFactory) -> None:
    """rustup's proxies with no toolchain for this user (their toolchains under /root, say) exist but cannot run."""
    provider = LocalProvider(state_dir=tmp_path_factory.mktemp("broken-rust"))
    info = sync.portal().call(provider.create_sandbox, SandboxConfig(env={"PATH": "/workspace/bin:/usr/bin:/bin"}))
    sandbox = sync.Sandbox(AsyncSandbox(provider, info))
    try:
        for tool in ("rustc", "cargo"):
            sandbox.write_file(f"/workspace/bin/{tool}", RUSTUP_WITHOUT_TOOLCHAIN)
        sandbox.execute("chmod +x /workspace/bin/*").check()
        with pytest.raises(ToolchainMissing) as caught:
            sandbox.run_code('fn main() { println!("x"); }', "rust")
        assert (caught.value.language, caught.value.tool) == ("rust", "rustc")
        message = str(caught.value)
        assert "'rustc' is in the sandbox but does not run (error: rustup could not choose a version of rustc" in message
        assert "rustup default stable" in message and "RUSTUP_HOME" in message  # how to fix it
        assert "\n" not in message  # one line for the CLI
        unusable = sync.portal().call(langs.unusable_tools, sandbox.async_sandbox, ["cargo", "sh"])
        assert [(tool, why.split(" (")[0]) for tool, why in unusable] == [("cargo", "is in the sandbox but does not run")]
        # A language whose tools work is not held up by the probe.
        assert sandbox.run_code("print('fine')", "python").stdout == "fine\n"
    finally:
        sandbox.destroy()


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_language_survives_the_per_process_limits_where_no_cgroup_can_be_had(tmp_path_factory: pytest.TempPathFactory, language: str) -> None:
    """Without a cgroup, memory is bounded by RLIMIT_DATA and RLIMIT_AS: java and V8 reserve
    large address ranges, and must still run."""
    provider = LocalProvider(state_dir=tmp_path_factory.mktemp("rlimits-state"), cgroup_parent="off")
    info = sync.portal().call(provider.create_sandbox, SandboxConfig())
    sandbox = sync.Sandbox(AsyncSandbox(provider, info))
    try:
        assert info.metadata["limits"].startswith("per process")
        result = run_or_skip(sandbox, program(language), language, timeout=120)
        assert (result.exit_code, result.stdout) == (0, PAYLOAD), result.describe()
    finally:
        sandbox.destroy()


def test_a_sandbox_alike_the_last_is_not_searched_for_its_tools_again(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(langs, "_alike_by_key", {})
    seen: list[list[str]] = []
    real = LocalDriver.exec

    def spying(self: LocalDriver, sandbox_id: str, argv: list[str], **options: Any) -> Any:
        seen.append(list(argv))
        return real(self, sandbox_id, argv, **options)

    monkeypatch.setattr(LocalDriver, "exec", spying)
    provider = LocalProvider(state_dir=tmp_path_factory.mktemp("alike-state"))
    for n in range(3):  # each a new sandbox of the provider (a recycled one as root), with the same binds and PATH
        sandbox = sync.Sandbox(AsyncSandbox(provider, sync.portal().call(provider.create_sandbox, SandboxConfig())))
        try:
            assert sync.judge(sandbox, f"print({n})", "python", expected_stdout=f"{n}\n").passed
        finally:
            sandbox.destroy()
    assert sum(argv[:2] == ["/bin/sh", "-c"] for argv in seen) == 1, seen  # command -v python3, once
    assert sum(argv[-1:] == ["--version"] for argv in seen) == 1, seen
