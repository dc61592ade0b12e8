"""`sandboxes run`: a command, a source file, or source on stdin, in a sandbox."""

from __future__ import annotations

from pathlib import Path

import click

from .. import languages, sync
from ..errors import SandboxError
from ._util import ERROR_EXIT, binary_stream, echo_err, fail, host_labels, parse_pairs, piped_stdin, provider_option, reported, stream_command

EXAMPLES = """
\b
Examples:
  sandboxes run --file main.go                  # language from the extension
  sandboxes run --file main.py -- arg1 arg2     # arguments for the program
  sandboxes run --file main.py --with util.py --with data/   # files it imports or reads, beside it
  echo 5 | sandboxes run --file square.py       # piped input is the program's stdin
  cat main.rs | sandboxes run --lang rust       # source on stdin
  sandboxes run "python3 -c 'print(42)'"        # a shell command
  sandboxes run ls -la /                        # several words: joined with spaces, run by the shell (as ssh does)
  sandboxes run -e NAME=value -t 30 'echo $NAME' # options come before the command
  sandboxes run --file main.py --deps           # install requirements.txt first (with network; the program runs without)
  sandboxes run --file app.py -l project=demo --reuse
  sandboxes run --file app.py -e DEBUG=1 -t 60 --keep
"""


@click.command(epilog=EXAMPLES, context_settings={"allow_interspersed_args": False})
@click.argument("command", nargs=-1)
@click.option("-f", "--file", "file", type=click.Path(dir_okay=False, path_type=Path), help="Source file to run; its extension gives the language.")
@click.option(
    "--with",
    "siblings",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="A file or directory to put beside --file's source (repeatable): modules it imports, data it reads.",
)
@click.option("--lang", "--language", "lang", help=f"Language of --file or of source read from stdin: {', '.join(languages.known_languages())}.")
@provider_option()
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Environment variable for the program (repeatable).")
@click.option("-l", "--label", "labels", multiple=True, metavar="K=V", help="Label for the sandbox (repeatable); with --reuse, which sandbox to reuse.")
@click.option("--reuse", is_flag=True, help="Reuse a live sandbox carrying the labels (or create one) and keep it.")
@click.option("--keep", is_flag=True, help="Keep the sandbox afterwards; its id is printed on stderr.")
@click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds each step (install, build, run) may take.")
@click.option("--image", help="Image (cloud) or root filesystem directory (local).")
@click.option(
    "--deps",
    is_flag=True,
    help="Install dependencies from go.mod, requirements.txt, package.json or Cargo.toml beside --file. "
    "The install has network; on the local provider the program itself still runs without it.",
)
@click.option("--network", is_flag=True, help="Give the sandbox network access.")
def run(
    command: tuple[str, ...],
    file: Path | None,
    siblings: tuple[Path, ...],
    lang: str | None,
    provider: str,
    env: tuple[str, ...],
    labels: tuple[str, ...],
    reuse: bool,
    keep: bool,
    timeout: float | None,
    image: str | None,
    deps: bool,
    network: bool,
) -> None:
    """Run a command, a source file (--file) or source from stdin (--lang) in a sandbox.

    Options come first: everything from the command's first word on belongs
    to it, as with docker run and ssh. Several words are joined with spaces and
    run by the shell, as ssh does. With --file or --lang, COMMAND is the
    program's arguments. Output streams live and the exit code is the program's.
    """
    env_vars = parse_pairs(env, "-e")
    label_map = parse_pairs(labels, "-l")
    if reuse and not label_map:
        fail("--reuse needs at least one label saying which sandbox to reuse: -l KEY=VALUE", 2)
    code: bytes | None = None
    language: languages.Language | None = None
    files: dict[str, bytes] = {}
    stdin: bytes | None = None
    with reported(2):
        if file is not None:
            try:
                code = file.read_bytes()
            except FileNotFoundError:
                fail(f"file not found: {file}", 2)
            except OSError as error:
                fail(f"cannot read {file}: {error.strerror}", 2)
            language = languages.get_language(lang) if lang else languages.language_for_file(file.name)
            if deps:
                files = {name: (file.parent / name).read_bytes() for name in languages.manifests() if (file.parent / name).is_file()}
                if not files:
                    fail(f"--deps: no dependency manifest ({', '.join(languages.manifests())}) beside {file}", 2)
            stdin = piped_stdin()
        elif lang:
            language = languages.get_language(lang)
            code = piped_stdin()
            if not code:
                fail(
                    f"--lang {lang}: no source on stdin; pipe the source on stdin, "
                    f"for example: cat main.{language.extensions[0].lstrip('.')} | sandboxes run --lang {lang}",
                    2,
                )
            if deps:
                fail("--deps needs --file: the manifests are read from the file's directory", 2)
        elif command:
            stdin = piped_stdin()
        else:
            fail("nothing to run: give a COMMAND, --file PATH, or --lang LANG with source on stdin (see sandboxes run --help)", 2)
        if siblings:
            if language is None:
                fail("--with puts files beside a program's source: give --file (or --lang)", 2)
            files = {**files, **_sibling_files(siblings)}
    args = list(command) if language is not None else []
    with reported(ERROR_EXIT):
        all_labels = {**host_labels(), **label_map}
        found = sync.Sandbox.find(label_map, provider) if reuse else None
        sandbox = found or sync.Sandbox.create(provider, labels=all_labels, image=image, network=True if network else None)
    if deps:
        echo_err(_deps_note(sandbox))
    keep = keep or reuse
    code_status = ERROR_EXIT
    try:
        with reported(ERROR_EXIT):
            if language is not None:
                assert code is not None
                code_status = _run_code(sandbox, code, language, files, args, env_vars, stdin, timeout, deps, file.name if file else None)
            else:
                argv = ["/bin/sh", "-c", " ".join(command)]
                code_status = stream_command(sandbox, argv, env=env_vars, stdin=stdin, timeout=timeout)
    finally:
        if keep:
            echo_err(f"sandbox kept: {sandbox.id} (provider {sandbox.provider}); sandboxes exec {sandbox.id} COMMAND -p {sandbox.provider}")
        else:
            try:
                sandbox.destroy()
            except SandboxError as error:
                echo_err(f"warning: could not destroy sandbox {sandbox.id}: {error}")
    click.get_current_context().exit(code_status)


def _sibling_files(paths: tuple[Path, ...]) -> dict[str, bytes]:
    """What --with names, by the relative name each gets beside the source: a file by
    its name, a directory's regular files below the directory's name."""
    files: dict[str, bytes] = {}
    for path in paths:
        if path.is_dir():
            for member in sorted(path.rglob("*")):
                if member.is_file() and not member.is_symlink():
                    files[f"{path.name}/{member.relative_to(path).as_posix()}"] = member.read_bytes()
        else:
            files[path.name] = path.read_bytes()
    return files


def _run_code(
    sandbox: sync.Sandbox,
    code: bytes,
    language: languages.Language,
    files: dict[str, bytes],
    args: list[str],
    env: dict[str, str],
    stdin: bytes | None,
    timeout: float | None,
    deps: bool,
    name: str | None,
) -> int:
    prepared = sync.portal().call(lambda: languages.prepare_code(sandbox.async_sandbox, code, language, files=files, timeout=timeout, deps=deps, name=name))
    try:
        if prepared.failed is not None:
            failed = prepared.failed
            binary_stream("stdout").write(failed.stdout.encode())
            binary_stream("stderr").write(failed.stderr.encode())
            if failed.timed_out:
                echo_err(f"Error: the build timed out after {timeout:g}s")
                return 124
            return failed.exit_code or 1
        return stream_command(
            sandbox,
            [*prepared.argv, *args],
            env={**prepared.env, **env},
            cwd=prepared.directory,
            stdin=stdin,
            timeout=timeout,
        )
    finally:
        sync.portal().call(languages.cleanup, sandbox.async_sandbox, prepared)


def _deps_note(sandbox: sync.Sandbox) -> str:
    """What --deps does about network here, said on stderr before it installs."""
    if languages.installs_elsewhere(sandbox.async_sandbox):
        return "note: --deps installs the dependencies in a separate sandbox with network access, then copies them in; the program runs without network"
    if sandbox.info.metadata.get("network"):
        return "note: --deps installs the dependencies inside the sandbox, which has network access (--network)"
    return f"note: --deps installs the dependencies inside the sandbox, which needs network access on provider {sandbox.provider}"
