"""The language registry and ``run_code()``: source in, built and run in a sandbox.

Source and dependency manifests always travel through the file API
(``write_file``), never quoted into a shell string; every build and run step
is an argument vector run without a shell. To add a language, add one
``Language`` to ``LANGUAGES``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ToolchainMissing
from .models import ExecutionResult

if TYPE_CHECKING:
    from .sandbox import Sandbox

RUN_ROOT = "/tmp/sandboxes-run"
"""Each ``run_code`` call gets its own directory below this, removed afterwards."""

Argv = tuple[str, ...]


@dataclass(frozen=True)
class Recipe:
    """One way to build and run a language: the tools it needs, then its steps.

    ``{src}`` in an argument is the source file name, ``{out}`` the built
    program; every step runs in the run directory.
    """

    requires: tuple[str, ...]
    run: Argv
    build: tuple[Argv, ...] = ()


@dataclass(frozen=True)
class Deps:
    """How to install dependencies from a manifest uploaded beside the source."""

    manifests: tuple[str, ...]
    install: tuple[Argv, ...]
    requires: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Language:
    """Everything the registry knows about one language."""

    name: str
    source: str  # file name of the source inside the run directory
    recipes: tuple[Recipe, ...]  # the first whose tools all exist is used
    install_hint: str
    aliases: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    deps: tuple[Deps, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    deps_source: str | None = None  # where the source goes when a manifest wants a project layout


_HOST_HINT = "the local provider uses the host's toolchains found on PATH; on a cloud provider pick an image that has it (--image)"

LANGUAGES: tuple[Language, ...] = (
    Language(
        name="python",
        aliases=("py", "python3"),
        extensions=(".py",),
        source="main.py",
        recipes=(Recipe(requires=("python3",), run=("python3", "{src}")),),
        deps=(
            Deps(
                manifests=("requirements.txt",),
                requires=("python3",),
                install=(("python3", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", ".deps/python", "-r", "requirements.txt"),),
                env=(("PYTHONPATH", "{dir}/.deps/python"),),
            ),
        ),
        install_hint="apt-get install python3",
    ),
    Language(
        name="javascript",
        aliases=("node", "js", "nodejs"),
        extensions=(".js", ".mjs", ".cjs"),
        source="main.js",
        recipes=(Recipe(requires=("node",), run=("node", "{src}")),),
        deps=(Deps(manifests=("package.json",), requires=("npm",), install=(("npm", "install", "--no-audit", "--no-fund", "--loglevel=error"),)),),
        install_hint="apt-get install nodejs npm",
    ),
    Language(
        name="typescript",
        aliases=("ts", "tsx"),
        extensions=(".ts", ".mts", ".cts"),
        source="main.ts",
        recipes=(
            Recipe(requires=("tsx",), run=("tsx", "{src}")),
            Recipe(
                requires=("tsc", "node"),
                build=(("tsc", "--target", "es2022", "--module", "commonjs", "--skipLibCheck", "--outDir", ".build", "{src}"),),
                run=("node", ".build/main.js"),
            ),
        ),
        deps=(Deps(manifests=("package.json",), requires=("npm",), install=(("npm", "install", "--no-audit", "--no-fund", "--loglevel=error"),)),),
        install_hint="npm install -g tsx typescript (needs node: apt-get install nodejs npm)",
    ),
    Language(
        name="go",
        aliases=("golang",),
        extensions=(".go",),
        source="main.go",
        recipes=(Recipe(requires=("go",), build=(("go", "build", "-o", "{out}", "{src}"),), run=("{out}",)),),
        deps=(
            Deps(manifests=("go.mod", "go.sum"), requires=("go",), install=(("go", "mod", "tidy"),)),
        ),
        env=(("GOFLAGS", "-buildvcs=false"), ("GOTOOLCHAIN", "local"), ("CGO_ENABLED", "0")),
        install_hint="apt-get install golang-go, or https://go.dev/dl",
    ),
    Language(
        name="rust",
        aliases=("rs",),
        extensions=(".rs",),
        source="main.rs",
        recipes=(Recipe(requires=("rustc",), build=(("rustc", "--edition", "2021", "-o", "{out}", "{src}"),), run=("{out}",)),),
        deps=(
            Deps(
                manifests=("Cargo.toml", "Cargo.lock"),
                requires=("cargo",),
                install=(("cargo", "build", "--quiet", "--release"),),
            ),
        ),
        deps_source="src/main.rs",
        install_hint="curl https://sh.rustup.rs | sh (rustup), or apt-get install rustc cargo",
    ),
    Language(
        name="bash",
        aliases=("sh", "shell"),
        extensions=(".sh", ".bash"),
        source="main.sh",
        recipes=(Recipe(requires=("bash",), run=("bash", "{src}")), Recipe(requires=("sh",), run=("sh", "{src}"))),
        install_hint="apt-get install bash",
    ),
    Language(
        name="c",
        extensions=(".c",),
        source="main.c",
        recipes=(
            Recipe(requires=("gcc",), build=(("gcc", "-O1", "-o", "{out}", "{src}", "-lm"),), run=("{out}",)),
            Recipe(requires=("cc",), build=(("cc", "-O1", "-o", "{out}", "{src}", "-lm"),), run=("{out}",)),
        ),
        install_hint="apt-get install gcc",
    ),
    Language(
        name="cpp",
        aliases=("c++", "cxx"),
        extensions=(".cpp", ".cc", ".cxx", ".c++"),
        source="main.cpp",
        recipes=(
            Recipe(requires=("g++",), build=(("g++", "-O1", "-o", "{out}", "{src}"),), run=("{out}",)),
            Recipe(requires=("c++",), build=(("c++", "-O1", "-o", "{out}", "{src}"),), run=("{out}",)),
        ),
        install_hint="apt-get install g++",
    ),
    Language(
        name="java",
        extensions=(".java",),
        source="Main.java",
        # The single-file source launcher compiles in memory and runs the first class.
        recipes=(Recipe(requires=("java",), run=("java", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto", "{src}")),),
        install_hint="apt-get install default-jdk-headless (Java 11 or later)",
    ),
    Language(
        name="ruby",
        aliases=("rb",),
        extensions=(".rb",),
        source="main.rb",
        recipes=(Recipe(requires=("ruby",), run=("ruby", "{src}")),),
        deps=(Deps(manifests=("Gemfile", "Gemfile.lock"), requires=("bundle",), install=(("bundle", "install", "--quiet", "--path", ".deps/ruby"),)),),
        install_hint="apt-get install ruby",
    ),
)

_BY_NAME: dict[str, Language] = {}
for _language in LANGUAGES:
    for _key in (_language.name, *_language.aliases):
        _BY_NAME[_key] = _language


def known_languages() -> list[str]:
    """Canonical names, for error messages and --help."""
    return [language.name for language in LANGUAGES]


def get_language(name: str) -> Language:
    """The language by name or alias (case-insensitive); ValueError lists the known ones."""
    found = _BY_NAME.get(name.strip().lower().lstrip("."))
    if found is None:
        found = next((lang for lang in LANGUAGES if "." + name.strip().lower().lstrip(".") in lang.extensions), None)
    if found is None:
        names = ", ".join(f"{lang.name} ({'/'.join(lang.aliases)})" if lang.aliases else lang.name for lang in LANGUAGES)
        raise ValueError(f"unknown language {name!r}: known languages are {names}")
    return found


def language_for_file(filename: str) -> Language:
    """The language of a source file from its extension; ValueError when unknown."""
    lowered = filename.lower()
    for language in LANGUAGES:
        if any(lowered.endswith(ext) for ext in language.extensions):
            return language
    known = ", ".join(ext for lang in LANGUAGES for ext in lang.extensions)
    raise ValueError(f"cannot tell the language of {filename!r} from its extension (known: {known}); pass the language (--lang)")


MANIFESTS = tuple(dict.fromkeys(m for lang in LANGUAGES for d in lang.deps for m in d.manifests))
"""Every dependency manifest some language installs from (what --deps uploads)."""


@dataclass
class PreparedRun:
    """A program written and built in a sandbox, ready to run (or a failed build)."""

    directory: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    failed: ExecutionResult | None = None  # the failed build or install step, when there is one


_tool_cache: dict[tuple[str, str], bool] = {}


async def missing_tools(sandbox: Sandbox, tools: Sequence[str]) -> list[str]:
    """The tools not found by ``command -v`` inside the sandbox (cached per sandbox)."""
    unknown = [tool for tool in dict.fromkeys(tools) if (sandbox.id, tool) not in _tool_cache]
    if unknown:
        script = 'for t do command -v "$t" >/dev/null 2>&1 || echo "$t"; done'
        result = await sandbox.execute(["/bin/sh", "-c", script, "sh", *unknown], timeout=30)
        absent = set(result.stdout.split())
        for tool in unknown:
            _tool_cache[(sandbox.id, tool)] = tool not in absent
    return [tool for tool in tools if not _tool_cache[(sandbox.id, tool)]]


async def _choose(sandbox: Sandbox, language: Language) -> Recipe:
    wanted = [tool for recipe in language.recipes for tool in recipe.requires]
    absent = set(await missing_tools(sandbox, wanted))
    for recipe in language.recipes:
        if not absent.intersection(recipe.requires):
            return recipe
    tool = language.recipes[0].requires[0]
    raise ToolchainMissing(language.name, tool, f"{language.install_hint}; {_HOST_HINT}")


def _fill(argv: Argv, values: Mapping[str, str]) -> list[str]:
    return [part.format_map(values) if "{" in part else part for part in argv]


async def prepare_code(
    sandbox: Sandbox,
    code: str | bytes,
    language: str | Language,
    *,
    files: Mapping[str, str | bytes] | None = None,
    timeout: float | None = None,
    deps: bool = False,
) -> PreparedRun:
    """Write the source (and ``files``), install deps when asked, and build.

    Split from running so that the CLI can stream the run step live.
    """
    lang = language if isinstance(language, Language) else get_language(language)
    recipe = await _choose(sandbox, lang)
    directory = f"{RUN_ROOT}/{secrets.token_hex(6)}"
    files = dict(files or {})
    for name in files:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"files keys are paths relative to the program's directory, not {name!r}")
    manifests = [d for d in lang.deps if any(m in files for m in d.manifests)] if deps else []
    source = lang.deps_source if manifests and lang.deps_source else lang.source
    await sandbox.write_file(f"{directory}/{source}", code)
    for name, data in files.items():
        await sandbox.write_file(f"{directory}/{name}", data)
    values = {"src": source, "out": "./main.bin", "dir": directory}
    env = {k: v.format_map(values) for k, v in lang.env}
    prepared = PreparedRun(directory=directory, env=env)
    for dep in manifests:
        absent = await missing_tools(sandbox, dep.requires)
        if absent:
            raise ToolchainMissing(lang.name, absent[0], f"{lang.install_hint}; {_HOST_HINT}")
        env.update({k: v.format_map(values) for k, v in dep.env})
        for step in dep.install:
            result = await sandbox.execute(_fill(step, values), cwd=directory, env=env, timeout=timeout)
            if not result.success:
                prepared.failed = result
                return prepared
    if manifests and lang.name == "rust":  # cargo built the project: run its binary
        name = _cargo_package_name(files.get("Cargo.toml", b""))
        prepared.argv = [f"./target/release/{name}"]
        return prepared
    for step in recipe.build:
        result = await sandbox.execute(_fill(step, values), cwd=directory, env=env, timeout=timeout)
        if not result.success:
            prepared.failed = result
            return prepared
    prepared.argv = _fill(recipe.run, values)
    return prepared


def _cargo_package_name(manifest: str | bytes) -> str:
    import tomllib

    text = manifest.decode() if isinstance(manifest, bytes) else manifest
    try:
        package = tomllib.loads(text).get("package", {})
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"Cargo.toml is not valid TOML: {error}") from None
    bins = tomllib.loads(text).get("bin") or []
    return str((bins[0].get("name") if bins else None) or package.get("name") or "main")


async def cleanup(sandbox: Sandbox, prepared: PreparedRun) -> None:
    """Remove the run directory, so a reused sandbox does not fill up."""
    await sandbox.execute(["rm", "-rf", prepared.directory], timeout=60)


async def run_code(
    sandbox: Sandbox,
    code: str | bytes,
    language: str,
    *,
    stdin: str | bytes | None = None,
    files: Mapping[str, str | bytes] | None = None,
    args: Sequence[str] = (),
    timeout: float | None = None,
    deps: bool = False,
) -> ExecutionResult:
    """Build (when needed) and run ``code`` in ``sandbox``; a failed build is a failed result.

    ``files`` are written beside the source (relative paths); with ``deps``
    the manifests among them (requirements.txt, package.json, go.mod,
    Cargo.toml, ...) are installed first, which needs network in the sandbox.
    ``timeout`` limits each step (install, build, run) separately.
    """
    prepared = await prepare_code(sandbox, code, language, files=files, timeout=timeout, deps=deps)
    if prepared.failed is not None:
        await cleanup(sandbox, prepared)
        return prepared.failed
    argv = [*prepared.argv, *map(str, args)]
    # The run step removes its own directory when it ends: one round trip fewer.
    wrapped = ["/bin/sh", "-c", _RUN_AND_CLEAN, "sh", prepared.directory, *argv]
    try:
        result = await sandbox.execute(wrapped, cwd=prepared.directory, env=prepared.env, stdin=stdin, timeout=timeout)
    except BaseException:
        await cleanup(sandbox, prepared)
        raise
    if result.timed_out:  # the tree was killed before it could clean up
        await cleanup(sandbox, prepared)
    result.command = argv
    return result


_RUN_AND_CLEAN = 'd=$1; shift; "$@"; s=$?; cd / && rm -rf -- "$d"; exit "$s"'
