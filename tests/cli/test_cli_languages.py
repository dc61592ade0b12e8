"""`sandboxes run` for every language, from --file and from stdin, checked byte-exact."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests._programs import BROKEN, BROKEN_MARK, ECHO, ECHO_ARGS, ECHO_OUT, ECHO_STDIN, EXTENSIONS, LANGUAGES, PAYLOAD, program

from .conftest import CLI


@pytest.mark.parametrize("language", LANGUAGES)
def test_run_file_prints_payload_byte_exact(cli: CLI, tmp_path: Path, language: str) -> None:
    source = tmp_path / f"prog.{EXTENSIONS[language]}"
    source.write_text(program(language), encoding="utf-8")
    result = cli("run", "--file", str(source))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == PAYLOAD.encode()


@pytest.mark.parametrize("language", LANGUAGES)
def test_run_stdin_prints_payload_byte_exact(cli: CLI, language: str) -> None:
    result = cli("run", "--lang", language, input=program(language).encode())
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == PAYLOAD.encode()


@pytest.mark.parametrize("language", LANGUAGES)
def test_program_stdin_arguments_and_exit_code(cli: CLI, tmp_path: Path, language: str) -> None:
    source = tmp_path / f"echo.{EXTENSIONS[language]}"
    source.write_text(ECHO[language])
    result = cli("run", "--file", str(source), "--", *ECHO_ARGS, input=ECHO_STDIN.encode())
    assert result.returncode == 7, result.stderr.decode()
    assert result.stdout == ECHO_OUT.encode()


@pytest.mark.parametrize("language", ["go", "c", "java"])
def test_compile_error_exits_non_zero_with_compiler_output(cli: CLI, tmp_path: Path, language: str) -> None:
    source = tmp_path / f"broken.{EXTENSIONS[language]}"
    source.write_text(BROKEN[language])
    result = cli("run", "--file", str(source))
    assert result.returncode not in (0, 125)
    assert BROKEN_MARK[language] in (result.stdout + result.stderr).decode()
    assert b"Traceback" not in result.stderr


def test_lang_overrides_the_extension(cli: CLI, tmp_path: Path) -> None:
    source = tmp_path / "script.txt"
    source.write_text("print(6 * 7)\n")
    result = cli("run", "--file", str(source), "--lang", "python")
    assert (result.returncode, result.stdout) == (0, b"42\n")


def test_deps_installs_go_mod_beside_the_file_and_says_where(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("module example.com/app\n\ngo 1.18\n")
    source = tmp_path / "main.go"
    source.write_text('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("deps ok") }\n')
    result = cli("run", "--file", str(source), "--deps")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"deps ok\n"
    note = "note: --deps installs the dependencies in a separate sandbox with network access, then copies them in; the program runs without network"
    assert result.stderr.decode().splitlines() == [note]


def test_deps_from_pypi_while_the_program_stays_offline(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    source = tmp_path / "main.py"
    source.write_text(
        "import socket, sys, six\nprint(six.__version__)\n"
        "try:\n    socket.create_connection((sys.argv[1], 443), timeout=5)\n    print('online')\n"
        "except OSError:\n    print('offline')\n"
    )
    address = socket.getaddrinfo("pypi.org", 443, socket.AF_INET)[0][4][0]
    result = cli("run", "--file", str(source), "--deps", "--", address)
    assert (result.returncode, result.stdout) == (0, b"1.16.0\noffline\n"), result.stderr.decode()
    assert b"the program runs without network" in result.stderr
    # With --network the sandbox has it, so the install runs in place and says so.
    online = cli("run", "--file", str(source), "--deps", "--network", "--", address)
    assert (online.returncode, online.stdout) == (0, b"1.16.0\nonline\n"), online.stderr.decode()
    assert b"inside the sandbox, which has network access" in online.stderr


def test_deps_without_a_manifest_is_an_error(cli: CLI, tmp_path: Path) -> None:
    source = tmp_path / "main.py"
    source.write_text("print(1)\n")
    result = cli("run", "--file", str(source), "--deps")
    assert result.returncode == 2
    assert "requirements.txt" in one_line(result)


def one_line(result) -> str:
    from .conftest import one_line_error

    return one_line_error(result)


def test_with_puts_modules_and_data_beside_the_source(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import helper\nprint(helper.greet(open('data/name.txt').read().strip()))\n")
    (tmp_path / "helper.py").write_text("def greet(name):\n    return f'hello {name}'\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "name.txt").write_text("sibling\n")
    alone = cli("run", "--file", str(tmp_path / "main.py"))
    assert alone.returncode != 0 and b"helper" in alone.stderr  # not found: only what --with names goes along
    result = cli("run", "--file", str(tmp_path / "main.py"), "--with", str(tmp_path / "helper.py"), "--with", str(tmp_path / "data"))
    assert (result.returncode, result.stdout) == (0, b"hello sibling\n"), result.stderr
    assert cli("run", "--with", str(tmp_path / "helper.py"), "true").returncode == 2


def test_a_traceback_names_the_users_file(cli: CLI, tmp_path: Path) -> None:
    source = tmp_path / "solver.py"
    source.write_text("def solve():\n    raise ValueError('boom')\n\nsolve()\n")
    result = cli("run", "--file", str(source))
    assert result.returncode == 1
    assert b'solver.py", line 2, in solve' in result.stderr, result.stderr
