"""The language registry and ``run_code()``: source in, built and run in a sandbox.

Source and dependency manifests always travel through the file API
(``write_file``), never quoted into a shell string; every build and run step
is an argument vector run without a shell. To add a language, add one
``Language`` to ``LANGUAGES``, or publish one from another package under the
``sandboxes.languages`` entry-point group (``languages()`` loads them).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import secrets
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from ._entry_points import published
from .driver import TOOLCHAINS, WARM_PYTHON
from .errors import ToolchainMissing
from .models import DEFAULT_COMMAND_TIMEOUT_SECONDS, ExecutionResult, SandboxConfig

log = logging.getLogger("sandboxes")

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
    """How to install dependencies from a manifest uploaded beside the source.

    ``install`` steps download, so they run where there is network: in a
    short-lived helper sandbox when the program's own sandbox has none (see
    ``prepare_code``). They leave everything inside the run directory, which
    is then copied into the program's sandbox; ``build`` steps (when given,
    instead of the language's own) and the run work offline from it.
    ``env`` applies to every step, ``offline_env`` to the build and run only.
    """

    manifests: tuple[str, ...]
    install: tuple[Argv, ...]
    requires: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    offline_env: tuple[tuple[str, str], ...] = ()
    build: tuple[Argv, ...] | None = None


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
    keeps_name: bool = False  # the source may keep the user's file name (tracebacks and compiler errors show it)


_HOST_HINT = "the local provider uses the host's toolchains found on PATH; on a cloud provider pick an image that has it (--image)"

LANGUAGES: tuple[Language, ...] = (
    Language(
        name="python",
        aliases=("py", "python3"),
        extensions=(".py",),
        source="main.py",
        keeps_name=True,
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
            Deps(
                manifests=("go.mod", "go.sum"),
                requires=("go",),
                install=(("go", "mod", "tidy"),),
                # The module cache lives in the run directory (it travels with it), writable so it can be removed.
                env=(("GOMODCACHE", "{dir}/.deps/go/mod"), ("GOFLAGS", "-buildvcs=false -modcacherw")),
                offline_env=(("GOPROXY", "off"),),  # the build never reaches for the network: a missing module says so
            ),
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
                install=(("cargo", "fetch", "--quiet"),),
                env=(("CARGO_HOME", "{dir}/.deps/cargo"),),  # the crates fetched travel with the run directory
                offline_env=(("CARGO_NET_OFFLINE", "true"),),
                build=(("cargo", "build", "--quiet", "--release", "--offline"),),
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
        keeps_name=True,
        recipes=(Recipe(requires=("bash",), run=("bash", "{src}")), Recipe(requires=("sh",), run=("sh", "{src}"))),
        install_hint="apt-get install bash",
    ),
    Language(
        name="c",
        extensions=(".c",),
        source="main.c",
        keeps_name=True,
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
        keeps_name=True,
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
        recipes=(Recipe(requires=("java",), run=("java", "-ea", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto", "{src}")),),  # -ea: assert holds
        install_hint="apt-get install default-jdk-headless (Java 11 or later)",
    ),
    Language(
        name="ruby",
        aliases=("rb",),
        extensions=(".rb",),
        source="main.rb",
        keeps_name=True,
        recipes=(Recipe(requires=("ruby",), run=("ruby", "{src}")),),
        deps=(
            Deps(
                manifests=("Gemfile", "Gemfile.lock"),
                requires=("bundle",),
                install=(("bundle", "install", "--quiet"),),
                env=(("BUNDLE_PATH", "{dir}/.deps/ruby"), ("BUNDLE_GEMFILE", "{dir}/Gemfile")),
                offline_env=(("RUBYOPT", "-rbundler/setup"),),
            ),
        ),
        install_hint="apt-get install ruby",
    ),
)

ENTRY_POINT_GROUP = "sandboxes.languages"


@functools.cache
def languages() -> tuple[Language, ...]:
    """The built-in languages, then those other packages publish under the ``sandboxes.languages`` entry-point group."""
    found = list(LANGUAGES)
    taken = {key for language in found for key in (language.name, *language.aliases)}
    for where, language in published(ENTRY_POINT_GROUP, Language):
        clash = taken.intersection((language.name, *language.aliases))
        if clash:
            log.warning("language %r from entry point %s reuses the name(s) %s; ignored", language.name, where, ", ".join(sorted(clash)))
            continue
        taken.update((language.name, *language.aliases))
        found.append(language)
    return tuple(found)


def known_languages() -> list[str]:
    """Canonical names, for error messages and --help."""
    return [language.name for language in languages()]


def get_language(name: str) -> Language:
    """The language by name or alias (case-insensitive); ValueError lists the known ones."""
    wanted = name.strip().lower().lstrip(".")
    found = next((lang for lang in languages() if wanted in (lang.name, *lang.aliases)), None)
    if found is None:
        found = next((lang for lang in languages() if "." + wanted in lang.extensions), None)
    if found is None:
        names = ", ".join(f"{lang.name} ({'/'.join(lang.aliases)})" if lang.aliases else lang.name for lang in languages())
        raise ValueError(f"unknown language {name!r}: known languages are {names}")
    return found


def language_for_file(filename: str) -> Language:
    """The language of a source file from its extension; ValueError when unknown."""
    lowered = filename.lower()
    for language in languages():
        if any(lowered.endswith(ext) for ext in language.extensions):
            return language
    known = ", ".join(ext for lang in languages() for ext in lang.extensions)
    raise ValueError(f"cannot tell the language of {filename!r} from its extension (known: {known}); pass the language (--lang)")


def manifests() -> tuple[str, ...]:
    """Every dependency manifest some language installs from (what --deps uploads)."""
    return tuple(dict.fromkeys(m for lang in languages() for d in lang.deps for m in d.manifests))


@dataclass
class PreparedRun:
    """A program written and built in a sandbox, ready to run (or a failed build)."""

    directory: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    failed: ExecutionResult | None = None  # the failed build or install step, when there is one


_PROBES = {"rustc": "--version", "cargo": "--version"}
"""Tools that can exist and still not run: rustup's proxies with no toolchain this user can reach
(its toolchains under another user's home, such as /root/.rustup). They are run once to be sure."""

_CHECK_TOOLS = """
for a do
  t=${a%%\\?*}
  if ! command -v "$t" >/dev/null 2>&1; then echo "$t"; continue; fi
  if [ "$t" != "$a" ] && ! out=$("$t" "${a#*\\?}" 2>&1 </dev/null); then
    printf '%s!%s\\n' "$t" "${out%%
*}"
  fi
done
"""
# sandbox handle -> {tool: None when it works, else why not}; by handle, not id: ids
# can repeat (cassette placeholders), and the cache goes with the handle.
_tool_cache: weakref.WeakKeyDictionary[Sandbox, dict[str, str | None]] = weakref.WeakKeyDictionary()
_alike: contextvars.ContextVar[tuple[set[str], dict[str, str]] | None] = contextvars.ContextVar("sandboxes_alike", default=None)
"""Tools that worked in a sandbox alike the ones in use (``alike_sandboxes``), and their versions; None outside one."""
_alike_by_key: dict[tuple[str, str], tuple[set[str], dict[str, str]]] = {}  # (provider, TOOLCHAINS) -> tools, versions


def _alike_of(sandbox: Sandbox) -> tuple[set[str], dict[str, str]] | None:
    """What worked in sandboxes alike this one (tools, versions): within ``alike_sandboxes``,
    or the ones of its provider with the same ``TOOLCHAINS`` (a recycled local sandbox's)."""
    shared = _alike.get()
    if shared is not None:
        return shared
    key = sandbox.info.metadata.get(TOOLCHAINS)
    if not isinstance(key, str):
        return None
    return _alike_by_key.setdefault((sandbox.provider, key), (set(), {}))


async def missing_tools(sandbox: Sandbox, tools: Sequence[str]) -> list[str]:
    """The tools that are not usable inside the sandbox (cached per sandbox)."""
    return [tool for tool, _ in await unusable_tools(sandbox, tools)]


async def unusable_tools(sandbox: Sandbox, tools: Sequence[str]) -> list[tuple[str, str]]:
    """(tool, why) for each tool not found by ``command -v``, or found but failing its probe."""
    known = _tool_cache.setdefault(sandbox, {})
    alike = _alike_of(sandbox)
    usable = alike[0] if alike is not None else None
    if usable is not None:
        known.update({tool: None for tool in tools if tool in usable and tool not in known})
    unknown = [tool for tool in dict.fromkeys(tools) if tool not in known]
    if unknown:
        probes = [f"{tool}?{_PROBES[tool]}" if tool in _PROBES else tool for tool in unknown]
        result = await sandbox.execute(["/bin/sh", "-c", _CHECK_TOOLS, "sh", *probes], timeout=60)
        found: dict[str, str | None] = dict.fromkeys(unknown)
        for line in result.stdout.splitlines():
            tool, broken, first_line = line.partition("!")
            if tool in found:
                found[tool] = f"is in the sandbox but does not run ({first_line.strip() or 'no output'})" if broken else "is not installed in the sandbox"
        known.update(found)
        if usable is not None:
            usable.update(tool for tool, why in found.items() if why is None)
    return [(tool, why) for tool in tools if (why := known[tool]) is not None]


_VERSION_ARGS = {"go": ("version",)}  # the others take --version
_versions: weakref.WeakKeyDictionary[Sandbox, dict[str, str]] = weakref.WeakKeyDictionary()


async def toolchain_version(sandbox: Sandbox, language: str | Language) -> str:
    """The first line of the language's tool's ``--version`` in the sandbox (provenance), or "" when it says none."""
    lang = language if isinstance(language, Language) else get_language(language)
    recipe = await _choose(sandbox, lang)
    tool = recipe.requires[0]
    alike = _alike_of(sandbox)
    shared = alike[1] if alike is not None else None
    known = _versions.setdefault(sandbox, {})
    if tool not in known and shared is not None and tool in shared:
        known[tool] = shared[tool]
    if tool not in known:
        result = await sandbox.execute([tool, *_VERSION_ARGS.get(tool, ("--version",))], timeout=60)
        text = (result.stdout or result.stderr).strip()
        known[tool] = text.splitlines()[0] if result.success and text else ""
        if shared is not None:
            shared[tool] = known[tool]
    return known[tool]


@contextlib.contextmanager
def alike_sandboxes() -> Iterator[None]:
    """Within it, the sandboxes used are made alike (one provider, one config, as ``sandboxes eval`` makes them),
    so a tool that works in one is not probed again in the next."""
    token = _alike.set((set(), {}))
    try:
        yield
    finally:
        _alike.reset(token)


def _missing(sandbox: Sandbox, language: Language, tool: str, why: str) -> ToolchainMissing:
    hint = f"{language.install_hint}; {_HOST_HINT}"
    if sandbox.provider == "local":
        if "rustup" in why:
            hint += (
                f". rustup looks for toolchains in $RUSTUP_HOME, else ~/.rustup, of the user running sandboxes ({_user_name()}): "
                "install one there (rustup default stable) or point RUSTUP_HOME at one this user can read"
            )
        hint += _unreachable_path_note(tool)
    return ToolchainMissing(language.name, tool, hint, reason=why)


def _unreachable_path_note(tool: str) -> str:
    """Where the host's PATH names directories this user cannot enter (a toolchain under /root, say)."""
    blocked: dict[str, list[str]] = {}  # closed directory -> PATH entries inside it
    for entry in dict.fromkeys(os.environ.get("PATH", "").split(os.pathsep)):
        if not entry.startswith("/") or os.access(entry, os.X_OK):
            continue
        parent = entry
        while parent != "/" and not os.path.isdir(parent):
            parent = os.path.dirname(parent)
        if parent != entry and not os.access(parent, os.X_OK):  # it may exist: a directory on the way is closed to us
            blocked.setdefault(parent, []).append(entry)
    if not blocked:
        return ""
    where = "; ".join(f"{', '.join(entries)} inside {parent}" for parent, entries in blocked.items())
    return (
        f". Note: your PATH names {where}, which user {_user_name()} cannot enter, so a {tool} there is out of reach: "
        "install it for this user or system-wide, or run as the user who owns it"
    )


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())


async def _choose(sandbox: Sandbox, language: Language) -> Recipe:
    wanted = [tool for recipe in language.recipes for tool in recipe.requires]
    unusable = dict(await unusable_tools(sandbox, wanted))
    for recipe in language.recipes:
        if not unusable.keys() & set(recipe.requires):
            return recipe
    tool = next(t for t in language.recipes[0].requires if t in unusable)
    raise _missing(sandbox, language, tool, unusable[tool])


def _fill(argv: Argv, values: Mapping[str, str]) -> list[str]:
    return [part.format_map(values) if "{" in part else part for part in argv]


def _plain_name(name: str) -> bool:
    """A file name that is safe as one argument: no directory, no option-like start."""
    return "/" not in name and not name.startswith((".", "-")) and name.isprintable() and len(name) <= 255


async def prepare_code(
    sandbox: Sandbox,
    code: str | bytes,
    language: str | Language,
    *,
    files: Mapping[str, str | bytes] | None = None,
    timeout: float | None = None,
    deps: bool = False,
    name: str | None = None,
) -> PreparedRun:
    """Write the source (and ``files``), install deps when asked, and build.

    Split from running so that the CLI can stream the run step live. ``name``,
    the user's file name, is the source's name where the language allows it,
    so that tracebacks and compiler errors name the file the user knows.
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
    if name and lang.keeps_name and not manifests and _plain_name(name) and name not in files:
        source = name
    program = {source: code, **files}
    values = {"src": source, "out": "./main.bin", "dir": directory}
    env = {k: v.format_map(values) for k, v in lang.env}
    prepared = PreparedRun(directory=directory, env=env)
    if manifests:
        unusable = await unusable_tools(sandbox, [tool for dep in manifests for tool in dep.requires])
        if unusable:
            raise _missing(sandbox, lang, *unusable[0])
        for dep in manifests:
            env.update({k: v.format_map(values) for k, v in dep.env})
        prepared.failed = await _install(sandbox, program, manifests, directory, values, env, timeout)
        if prepared.failed is not None:
            return prepared
        for dep in manifests:
            env.update({k: v.format_map(values) for k, v in dep.offline_env})
    else:
        await sandbox.write_files({f"{directory}/{name}": data for name, data in program.items()})
    builds = next((dep.build for dep in manifests if dep.build is not None), recipe.build)
    for step in builds:
        result = await sandbox.execute(_fill(step, values), cwd=directory, env=env, timeout=timeout)
        if not result.success:
            prepared.failed = result
            return prepared
    if manifests and lang.name == "rust":  # cargo built the project: run its binary
        name = _cargo_package_name(files.get("Cargo.toml", b""))
        prepared.argv = [f"./target/release/{name}"]
    else:
        prepared.argv = _fill(recipe.run, values)
    if lang.name == "python":
        prepared.argv = [WARM_PYTHON, *prepared.argv]  # forked from an interpreter that has started, where the driver can
    return prepared


# -- dependencies: installed with network, run without ------------------------------------
HELPER_LABEL = ("sandboxes-role", "deps-install")
"""Carried by the helper sandbox that installs dependencies with network."""
_OWNER_LABELS = ("created-by", "host")  # the CLI's: `sandboxes gc` finds a helper that a crash left
_OWNER_PREFIX = "sandboxes_"  # the pytest plugin's run and worker labels: its sweep finds it
_TRANSFER_TIMEOUT = 300.0
_HELPER_SPARE_SECONDS = 2 * _TRANSFER_TIMEOUT + 60.0


def installs_elsewhere(sandbox: Sandbox) -> bool:
    """Whether ``deps`` installs in a helper sandbox: the program's sandbox is known to have no network.

    The local provider says so in ``info.metadata["network"]``; a sandbox that
    has network (or whose provider does not say, as cloud sandboxes, which
    have it by default) installs in place.
    """
    return sandbox.info.metadata.get("network") is False


async def _install(
    sandbox: Sandbox,
    program: Mapping[str, str | bytes],
    manifests: Sequence[Deps],
    directory: str,
    values: Mapping[str, str],
    env: Mapping[str, str],
    timeout: float | None,
) -> ExecutionResult | None:
    """Write the program and run the install steps; the failed step's result, or None.

    The program's sandbox never gets network: when it has none, the install
    runs in a helper sandbox created with network on the same provider (same
    image, so the same toolchains) at the same path, and the whole run
    directory, dependencies included, is copied back into the program's
    sandbox as an archive through the file API. The helper is destroyed
    whatever happens.
    """
    steps = [step for dep in manifests for step in dep.install]
    if not installs_elsewhere(sandbox):
        return await _write_and_install(sandbox, program, directory, steps, values, env, timeout)
    from .sandbox import Sandbox

    provider = sandbox.provider_instance
    labels = {k: v for k, v in sandbox.labels.items() if k in _OWNER_LABELS or k.startswith(_OWNER_PREFIX)}
    lifetime = (timeout or DEFAULT_COMMAND_TIMEOUT_SECONDS) * len(steps) + _HELPER_SPARE_SECONDS
    config = SandboxConfig(network=True, image=sandbox.info.image, labels={**labels, HELPER_LABEL[0]: HELPER_LABEL[1]}, lifetime=lifetime)
    helper = Sandbox(provider, await provider.create_sandbox(config))
    async with helper:  # destroyed on the way out, also on error or cancellation
        failed = await _write_and_install(helper, program, directory, steps, values, env, timeout)
        if failed is not None:
            return failed
        return await _copy_directory(helper, sandbox, directory)


async def _write_and_install(
    sandbox: Sandbox,
    program: Mapping[str, str | bytes],
    directory: str,
    steps: Sequence[Argv],
    values: Mapping[str, str],
    env: Mapping[str, str],
    timeout: float | None,
) -> ExecutionResult | None:
    for name, data in program.items():
        await sandbox.write_file(f"{directory}/{name}", data)
    for step in steps:
        result = await sandbox.execute(_fill(step, values), cwd=directory, env=dict(env), timeout=timeout)
        if not result.success:
            return result
    return None


_UNPACK = 'mkdir -p "$2" && tar -xzf "$1" -C "$2"; s=$?; rm -f "$1"; exit "$s"'


async def _copy_directory(source: Sandbox, target: Sandbox, directory: str) -> ExecutionResult | None:
    """Copy ``directory`` (symlinks and modes kept) from one sandbox to the other; a failed step's result, or None.

    The archive is packed and unpacked inside the sandboxes, never on the host.
    """
    archive = f"{directory}.tgz"
    packed = await source.execute(["tar", "-czf", archive, "-C", directory, "."], timeout=_TRANSFER_TIMEOUT)
    if not packed.success:
        packed.stderr = f"sandboxes: packing the installed dependencies failed:\n{packed.stderr}"
        return packed
    await target.write_file(archive, await source.read_file(archive))
    unpacked = await target.execute(["/bin/sh", "-c", _UNPACK, "sh", archive, directory], timeout=_TRANSFER_TIMEOUT)
    if not unpacked.success:
        unpacked.stderr = f"sandboxes: copying the installed dependencies into the sandbox failed:\n{unpacked.stderr}"
        return unpacked
    return None


def _cargo_package_name(manifest: str | bytes) -> str:
    import tomllib

    text = manifest.decode() if isinstance(manifest, bytes) else manifest
    try:
        package = tomllib.loads(text).get("package", {})
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"Cargo.toml is not valid TOML: {error}") from None
    bins = tomllib.loads(text).get("bin") or []
    return str((bins[0].get("name") if bins else None) or package.get("name") or "main")


CLEANUP_BATCH = 8
"""Finished run directories are removed this many at a time: one ``rm`` per
batch instead of one per run (a hello world in bash takes 2 ms; an ``rm``
process, over a millisecond). A sandbox keeps at most this many behind."""

_finished: weakref.WeakKeyDictionary[Sandbox, list[str]] = weakref.WeakKeyDictionary()


async def cleanup(sandbox: Sandbox, prepared: PreparedRun, *, now: bool = True) -> None:
    """Remove the run directory (with the others waiting for a batch), so a reused sandbox does not fill up.

    With ``now=False`` it waits for a full batch.
    """
    waiting = _finished.setdefault(sandbox, [])
    waiting.append(prepared.directory)
    if now or len(waiting) >= CLEANUP_BATCH:
        directories, waiting[:] = list(waiting), []
        await sandbox.execute(["rm", "-rf", "--", *directories], timeout=60)


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
    Cargo.toml, ...) are installed first. Installing needs network: a
    sandbox without it (the local provider's default) keeps none, the install
    runs in a short-lived helper sandbox and what it installed is copied in.
    ``timeout`` limits each step (install, build, run) separately.
    """
    prepared = await prepare_code(sandbox, code, language, files=files, timeout=timeout, deps=deps)
    if prepared.failed is not None:
        await cleanup(sandbox, prepared)
        return prepared.failed
    argv = [*prepared.argv, *map(str, args)]
    try:
        result = await sandbox.execute(argv, cwd=prepared.directory, env=prepared.env, stdin=stdin, timeout=timeout)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await cleanup(sandbox, prepared)
        raise
    # Removed with the next batch, unless it may be large (installed dependencies).
    await cleanup(sandbox, prepared, now=deps)
    return result
