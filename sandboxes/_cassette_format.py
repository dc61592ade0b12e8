"""A cassette's YAML, read and written: nothing read is trusted, and format 1 is migrated to format 2.

A cassette may come from anywhere (a pull request, a shared repository), so
YAML aliases are refused (an alias bomb expands without bound), and every
field is checked for its type before anything uses it: a recorded
``timed_out: 'false'`` is an error that names the field, never True.

Format 1 recorded above the engine (``execute``/``stream`` of a command, a
``create`` holding the setup commands and working directory); format 2
records the driver's operations under it (``exec`` of an argument vector,
setup commands as the execs they are). A format-1 file is read as the
format-2 operations it stands for, and rewritten as format 2 when recorded.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from .cassette import Interaction

TRUNCATION_MARKER = "\n[... output truncated ...]\n"  # what OutputBuffer puts between head and tail
OPS = ("create", "get", "list", "destroy", "exec", "write_file", "read_file")
_V1_OPS = ("create", "get", "list", "destroy", "execute", "stream", "write_file", "read_file")


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # libyaml's when present (~10x faster): chosen at run time
    """Block scalars for multi-line text, so recorded output reads as it printed."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str_representer)
_Dumper.ignore_aliases = lambda self, data: True  # never write anchors: the loader refuses them
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def write_document(document: Mapping[str, Any]) -> str:
    """The YAML of a cassette's document: no anchors, multi-line text as block scalars."""
    return str(yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000))


def read_document(text: str, loader: type = LOADER) -> tuple[str | None, list[Interaction]]:
    """(provider, interactions) of a cassette's text; ValueError says what is wrong and where.

    (A format-1 file's ``capabilities`` are read past: the provider's spec says them now.)
    """
    from .cassette import FORMAT_VERSION, OLDEST_VERSION, Interaction

    try:
        depth = 0
        for event in yaml.parse(text, Loader=loader):  # events only: nothing is built before this pass agrees
            if isinstance(event, yaml.AliasEvent):
                raise ValueError("it uses YAML aliases (*name), which a cassette never has: refused, since aliases can expand without bound")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ValueError(f"it nests deeper than {MAX_DEPTH} levels, which a cassette never does")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as error:
        raise ValueError(f"it is not valid YAML ({' '.join(str(error).split())})") from None
    data = data if data is not None else {}
    _expect(isinstance(data, dict), "the document must be a mapping with version, provider and interactions")
    version = data.get("version")
    _expect(
        type(version) is int and OLDEST_VERSION <= version <= FORMAT_VERSION,
        f"format version {version!r} is not one this version reads ({OLDEST_VERSION} to {FORMAT_VERSION})",
    )
    provider = data.get("provider")
    _expect(provider is None or isinstance(provider, str), "provider must be a provider's name")
    capabilities = data.get("capabilities")
    _expect(capabilities is None or (isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities)), "capabilities must be a list of names")
    items = data.get("interactions") or []
    _expect(isinstance(items, list), "interactions must be a list")
    raw = []
    for index, item in enumerate(items):
        _expect(isinstance(item, dict), f"interaction {index + 1} must be a mapping of op, args and result")
        op, args, result = item.get("op"), item.get("args") or {}, item.get("result") or {}
        _expect(op in (_V1_OPS if version == 1 else OPS), f"interaction {index + 1}: unknown op {op!r}")
        _expect(isinstance(args, dict) and isinstance(result, dict), f"interaction {index + 1} ({op}): args and result must be mappings")
        _expect(
            _plain(args) and _plain(result), f"interaction {index + 1} ({op}): only text keys and plain values (text, numbers, lists, mappings) are allowed"
        )
        raw.append((op, args, result))
    if version == 1:
        raw = _migrate(raw)
    for index, (op, args, result) in enumerate(raw):
        _check(op, args, result, f"interaction {index + 1} ({op})")
    return provider, [Interaction(op, args, result) for op, args, result in raw]


MAX_DEPTH = 32
EXIT_CODES = range(-(1 << 31), 1 << 31)


def _plain(value: Any) -> bool:
    """Text keys all the way down, and only the values YAML's safe loader makes for plain data."""
    if isinstance(value, dict):
        return all(isinstance(key, str) and _plain(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    return value is None or isinstance(value, str | int | float | bool)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# -- types ---------------------------------------------------------------------------------
def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _is_payload(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    if isinstance(value.get("text"), str):
        return True
    if isinstance(value.get("base64"), str):
        try:
            base64.b64decode(value["base64"], validate=True)
        except (binascii.Error, ValueError):
            return False
        return True
    return False


def _optional(kind: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or kind(value)


def _BOOL(value: Any) -> bool:
    return isinstance(value, bool)


def _INT(value: Any) -> bool:
    return type(value) is int and value in EXIT_CODES


def _NUMBER(value: Any) -> bool:
    return type(value) in (int, float)


def _STR(value: Any) -> bool:
    return isinstance(value, str)


def _STR_LIST(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(part, str) for part in value)


def _ERROR(value: Any) -> bool:
    if not (isinstance(value, dict) and isinstance(value.get("type"), str) and isinstance(value.get("message"), str)):
        return False
    seconds = all(value.get(name) is None or (type(value[name]) in (int, float) and value[name] >= 0) for name in ("retry_after", "retry_in"))
    texts = all(value.get(name) is None or isinstance(value[name], str) for name in ("provider", "capability", "filename"))
    number = value.get("errno")
    return seconds and texts and (number is None or (type(number) is int and number in EXIT_CODES))


def _DROPPED(value: Any) -> bool:
    return isinstance(value, list) and all(stream in ("stdout", "stderr") for stream in value)


def _OUTPUT(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(c, dict) and c.get("stream") in ("stdout", "stderr") and _is_payload(c) for c in value)


def _LISTED(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and _STR(i.get("sandbox")) and _is_str_map(i.get("labels") or {}) for i in value)


_FIELDS: dict[str, tuple[dict[str, tuple[Callable[[Any], bool], str]], dict[str, tuple[Callable[[Any], bool], str]]]] = {
    "create": (
        {"labels": (_is_str_map, "a mapping of strings"), "env": (_is_str_map, "a mapping of strings"), "network": (_optional(_BOOL), "true, false or null")},
        {"sandbox": (_STR, "a string"), "network": (_BOOL, "true or false")},
    ),
    "get": ({"sandbox": (_STR, "a string")}, {"found": (_BOOL, "true or false"), "labels": (_is_str_map, "a mapping of strings")}),
    "list": ({"labels": (_is_str_map, "a mapping of strings")}, {"sandboxes": (_LISTED, "a list of {sandbox, labels}")}),
    "destroy": ({"sandbox": (_STR, "a string")}, {"existed": (_BOOL, "true or false")}),
    "exec": (
        {
            "sandbox": (_STR, "a string"),
            "argv": (_STR_LIST, "a non-empty list of strings"),
            "env": (_is_str_map, "a mapping of strings"),
            "cwd": (_optional(_STR), "a string or null"),
        },
        {
            "output": (_OUTPUT, "a list of {stream: stdout|stderr, text|base64}"),
            "exit_code": (_INT, "a whole number"),
            "timed_out": (_BOOL, "true or false"),
            "oom_killed": (_BOOL, "true or false"),
            "dropped": (_DROPPED, "a list of streams (stdout, stderr)"),
            "exit_unknown": (_BOOL, "true or false"),
        },
    ),
    "write_file": ({"sandbox": (_STR, "a string"), "path": (_STR, "a string"), "data": (_STR, "a digest string")}, {}),
    "read_file": ({"sandbox": (_STR, "a string"), "path": (_STR, "a string")}, {"data": (_is_payload, "{text: ...} or {base64: ...}")}),
}


def _check(op: str, args: Mapping[str, Any], result: Mapping[str, Any], where: str) -> None:
    expected_args, expected_result = _FIELDS[op]
    for part, fields, values in (("args", expected_args, args), ("result", expected_result, result)):
        for name, (valid, what) in fields.items():
            if name in values and not valid(values[name]):
                raise ValueError(f"{where}: {part}.{name} must be {what}, not {values[name]!r}"[:400])
    if "error" in result:
        _expect(_ERROR(result["error"]), f"{where}: result.error must be a mapping with a type, a message and well-typed fields")
    elif op == "create":
        _expect("sandbox" in result, f"{where}: result.sandbox is missing")
    elif op == "exec":
        _expect("exit_code" in result or result.get("exit_unknown") is True, f"{where}: result.exit_code is missing")


# -- format 1 -> 2 -------------------------------------------------------------------------
def _migrate(raw: list[tuple[Any, dict[str, Any], dict[str, Any]]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    migrated: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    workdirs: dict[str, str | None] = {}
    for op, args, result in raw:
        if op == "create":
            workdir = args.get("working_dir")
            setup = args.get("setup_commands") or []
            _expect(workdir is None or isinstance(workdir, str), "a format-1 create's working_dir must be a string")
            _expect(isinstance(setup, list) and all(isinstance(c, str) for c in setup), "a format-1 create's setup_commands must be a list of strings")
            workdir = posixpath.normpath(workdir) if workdir else None  # as the engine sends it
            created = {k: v for k, v in args.items() if k not in ("working_dir", "setup_commands")}
            migrated.append(("create", created, result))
            sandbox = result.get("sandbox")
            if "error" in result or not isinstance(sandbox, str):
                continue
            workdirs[sandbox] = workdir
            if workdir:
                migrated.append(("exec", _exec_args(sandbox, ["mkdir", "-p", "--", workdir], {}, "/"), {"output": [], "exit_code": 0}))
            for command in setup:
                migrated.append(("exec", _exec_args(sandbox, ["/bin/sh", "-c", command], {}, workdir), {"output": [], "exit_code": 0}))
        elif op in ("execute", "stream"):
            sandbox = str(args.get("sandbox"))
            command = args.get("command")
            _expect(isinstance(command, str) or _STR_LIST(command), f"a format-1 {op}'s command must be a string or a list of strings")
            argv = ["/bin/sh", "-c", command] if isinstance(command, str) else [str(part) for part in command or ()]
            cwd = _within(workdirs.get(sandbox), args.get("cwd")) or workdirs.get(sandbox)
            exec_args = _exec_args(sandbox, argv, args.get("env") or {}, cwd, args)
            migrated.append(("exec", exec_args, _v1_result(op, result)))
        elif op in ("write_file", "read_file") and isinstance(args.get("path"), str):
            # the engine now resolves a relative path against the working directory before the driver sees it
            migrated.append((op, {**args, "path": _within(workdirs.get(str(args.get("sandbox"))), args["path"])}, result))
        else:
            migrated.append((op, args, result))
    return migrated


def _within(workdir: str | None, path: Any) -> Any:
    if isinstance(path, str) and workdir and not path.startswith("/"):
        return posixpath.join(workdir, path)
    return path


def _exec_args(sandbox: str, argv: list[str], env: dict[str, str], cwd: str | None, v1: Mapping[str, Any] | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {"sandbox": sandbox, "argv": argv, "env": env, "cwd": cwd, "timeout": (v1 or {}).get("timeout")}
    for key in ("stdin", "stdin_text"):
        if v1 and key in v1:
            args[key] = v1[key]
    return args


def _v1_result(op: str, result: Mapping[str, Any]) -> dict[str, Any]:
    if op == "execute":
        if "error" in result:
            return {"output": [], "error": result["error"]}
        texts = {name: result[name] for name in ("stdout", "stderr") if isinstance(result.get(name), str) and result[name]}
        # A truncated stream was stored with the marker between head and tail: stored without it, the engine puts it back.
        dropped = sorted(name for name, text in texts.items() if result.get("truncated") is True and TRUNCATION_MARKER in text)
        output = [{"stream": name, "text": text.replace(TRUNCATION_MARKER, "", 1) if name in dropped else text} for name, text in texts.items()]
        migrated: dict[str, Any] = {"output": output, "exit_code": result.get("exit_code", 0)}
        for key in ("timed_out", "oom_killed"):
            if key in result:
                migrated[key] = result[key]
        if dropped:
            migrated["dropped"] = dropped
        return migrated
    chunks = result.get("chunks") or []
    _expect(
        isinstance(chunks, list) and all(isinstance(c, dict) and isinstance(c.get("data"), str) for c in chunks),
        "a format-1 stream's chunks must be {stream, data} mappings",
    )
    output = [{"stream": c.get("stream"), "text": c["data"]} for c in chunks]
    ended = result.get("ended") or {}
    _expect(isinstance(ended, dict), "a format-1 stream's ended must be a mapping")
    if "error" in ended:
        return {"output": output, "error": ended["error"]}
    if "exit_code" not in ended:  # recorded before streams had a status: none is invented
        return {"output": output, "exit_unknown": True}
    streamed: dict[str, Any] = {"output": output, "exit_code": ended["exit_code"]}
    if "timed_out" in ended:
        streamed["timed_out"] = ended["timed_out"]
    return streamed
