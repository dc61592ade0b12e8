"""A Python interpreter that has already started, forked for each program it runs.

The agent starts it as ``python3 [flags] _zygote.py`` with the environment
of the runs it will serve, so its start-up (site, .pth hooks, encodings) is
what ``python3 [flags] main.py`` would do. For each run the agent sends the
program's path, arguments, working directory and stdio (and the cgroup files
the run must enter) over a socket; the zygote forks, and the child becomes
``python3 main.py``: its own session, stdio, cwd, ``sys.argv``,
``sys.path[0]``, a fresh ``__main__``, the modules of a fresh interpreter
only, dumpable again, default signal dispositions; the program is compiled
from its file and run, and the interpreter ends as it would (``atexit``,
flushing, exit status). The zygote reaps its children and reports each exit
status and CPU time to the agent. The judge's harness, a script the same in
every judgement, is compiled once here, and its body run once (``_prepared``):
its runs only call it.

What stays different from a new interpreter is documented in the README
(the hash seed is the zygote's; ``id()`` values and memory layout follow
from the fork).

Run by the sandbox's own python3 (any version from 3.8), from source:
nothing here may need more than that interpreter has at start, and what it
imports beyond that is taken out of ``sys.modules`` in each child.
"""

import sys

_FRESH = set(sys.modules)  # what a new interpreter with these flags has: the child gets exactly these

import os  # noqa: E402

_OS = set(sys.modules) - _FRESH
"""What ``import os`` loaded here, where these flags (-S) had not: a shared script (the judge's harness,
trusted, whose program runs as python3 main.py, which has them all) keeps them instead of importing
them again in every run (some 1.4 ms, most of it in ``_collections_abc``)."""

import _socket  # noqa: E402
import atexit  # noqa: E402
import gc  # noqa: E402
import marshal  # noqa: E402
import select  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any
else:
    import _signal  # not `signal`: it imports enum, which a new interpreter has not

SCM_RIGHTS = 1
CACHED_SOURCES = 4  # shared scripts whose compiled code the zygote keeps (the judge's harness)
CACHED_SOURCE_BYTES = 1 << 18
PR_SET_DUMPABLE = 4
MAX_FDS = 16
HARNESS = "_judge_harness.py"  # beside this file, in the agent's bundle
PREPARED_MAIN = "__sandbox_main__"


def _prctl(option: int, value: int) -> int:
    """prctl(2), through _ctypes alone; its function is made once, in the zygote: made in each
    run (three classes and a dlopen), it cost a run some 0.8 ms."""
    if not _PRCTL:
        _PRCTL.append(_prctl_function())
    return int(_PRCTL[0](option, value))


_PRCTL: "list[Any]" = []


def _prctl_function() -> "Any":
    import _ctypes

    class Long(_ctypes._SimpleCData):  # type: ignore[type-arg]  # generic only in typeshed
        _type_ = "l"

    class Function(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = Long

    class Libc:
        _handle = _ctypes.dlopen(None)  # type: ignore[arg-type]  # dlopen(NULL): the program, libc with it

    function = Function(("prctl", Libc()))  # type: ignore[arg-type]  # a handle is all CFuncPtr needs of a CDLL
    return lambda option, value: int(function(Long(option), Long(value), Long(0), Long(0), Long(0)))


def _say(channel: "_socket.socket", *words: object) -> None:
    """A line to the agent, plain text: the agent never unmarshals what a sandbox could forge."""
    channel.sendall(" ".join(str(word) for word in words).encode())


def serve(channel_fd: int) -> "tuple[dict[str, Any], list[int]]":
    """Fork a child per request and report its start and its end. Returns only in a child: its request."""
    channel = _socket.socket(fileno=channel_fd)
    _say(channel, "ready")  # undumpable from here (``_main``): no process can open its memory any more
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    _signal.set_wakeup_fd(wake_w)
    _signal.signal(_signal.SIGCHLD, lambda number, frame: None)  # its wake-up byte is what counts
    # The compiler's first use sets it up: 0.8 ms for Debian's python3 (1.5 ms under -S), once here
    # and not in every run; python3 main.py has compiled main.py before the program's first line.
    compile(b"pass", "<zygote>", "exec", dont_inherit=True)
    gc.freeze()  # what the zygote holds is never collected in a run: no run copies it by counting it
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                os.read(wake_r, 4096)
                _reap(channel)
                continue
            data, ancillary, _, _ = channel.recvmsg(1 << 20, _socket.CMSG_SPACE(MAX_FDS * 4))
            if not data:
                os._exit(0)  # the agent is gone
            fds = []
            for level, kind, payload in ancillary:
                if level == _socket.SOL_SOCKET and kind == SCM_RIGHTS:
                    fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, len(payload) - len(payload) % 4, 4)]
            request = marshal.loads(data)  # from the agent
            request["compiled"] = _compiled(request)
            request["prepared"] = _prepared(request["compiled"])
            pid = os.fork()
            if pid == 0:
                channel.close()
                _signal.set_wakeup_fd(-1)
                _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                return request, fds
            for passed in fds:
                os.close(passed)
            _say(channel, "started", request["token"], pid)


_CODE: "dict[bytes, Any]" = {}  # a shared script's source -> its code, compiled here once


def _compiled(request: "dict[str, Any]") -> "tuple[bytes, Any] | None":
    """A shared script's source and code, compiled once for all its runs: the judge's harness,
    the same in every run, costs a run some 6 ms to compile. Only a script the agent says is
    shared, and whose bytes hash as it says: never a lease's own program, whose text would
    stay in the zygote's memory, which every later run (a fork) can read. Only code that
    compiles without a warning is kept (a warning is printed by each compilation, as python3
    would). None: the child compiles it itself."""
    if not request.get("shared"):
        return None
    try:
        fd = os.open(os.path.join(request["cwd"], request["path"]), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_mode & 0o170000 != 0o100000:  # a regular file only: never a FIFO or a terminal
            return None
        source = os.read(fd, CACHED_SOURCE_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(source) > CACHED_SOURCE_BYTES or _sha256(source) != request["shared"]:
        return None
    code = _CODE.pop(source, None)
    if code is None:
        import warnings  # not the child's: it is out of sys.modules there, and its filters are put back

        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            try:
                code = compile(source, os.path.abspath(os.path.join(request["cwd"], request["path"])), "exec", dont_inherit=True)
            except (SyntaxError, ValueError, MemoryError, RecursionError):
                return None
        if warned:
            return None
    _CODE[source] = code
    while len(_CODE) > CACHED_SOURCES:
        del _CODE[next(iter(_CODE))]
    return source, code


_PREPARED: "dict[bytes, tuple[dict[str, Any], Any]]" = {}  # the harness's source -> its globals, and the code that calls it
_BUNDLED: "list[bytes | None]" = []


def _prepared(compiled: "tuple[bytes, Any] | None") -> "tuple[dict[str, Any], Any] | None":
    """The judge's harness, its body run once here: its runs only call its ``__sandbox_main__``.

    Its classes and functions, and the standard library's place on the path, cost
    a run some 0.7 ms to make; made here, they are each run's without a page of
    its own. Only the harness of this zygote's own bundle, byte for byte: no
    other code ever runs in the zygote, whose memory every later run (of every
    later lease) starts from. That body depends on nothing of a run's, which is
    that script's promise (``sandboxes/_judge_harness.py``). None: the run runs
    the script whole."""
    if compiled is None:
        return None
    source, code = compiled
    if source not in _PREPARED:
        if source != _bundled_harness():
            return None
        namespace = {"__name__": "__sandbox_prepared__", "__builtins__": sys.modules["builtins"]}
        try:
            exec(code, namespace)
        except Exception:
            return None
        if not callable(namespace.get(PREPARED_MAIN)):
            return None
        _PREPARED[source] = (namespace, compile(PREPARED_MAIN + "()", code.co_filename, "exec", dont_inherit=True))
        gc.freeze()  # as the rest of the zygote: no run copies it by counting it
    return _PREPARED[source]


def _bundled_harness() -> "bytes | None":
    if not _BUNDLED:
        try:
            with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), HARNESS), "rb") as handle:
                _BUNDLED.append(handle.read(CACHED_SOURCE_BYTES + 1))
        except OSError:
            _BUNDLED.append(None)
    return _BUNDLED[0]


def _sha256(data: bytes) -> "str | None":
    """Python's own SHA-256, never OpenSSL's. ``hashlib`` would load OpenSSL into the zygote, which
    reads the file ``$OPENSSL_CONF`` names (a lease may write it) and loads the modules it lists:
    code that would run in the zygote, whose memory every later run of every later lease starts
    from. None where the interpreter was built without it: then no code is kept."""
    for name in ("_sha2", "_sha256"):  # 3.12 and later, 3.8 to 3.11; not the child's (out of sys.modules there)
        try:
            return str(__import__(name).sha256(data).hexdigest())
        except ImportError:
            continue
    return None


def _renamed(code: "Any", filename: str) -> "Any":
    """``code`` as compiled from ``filename``: its functions' too."""
    consts = tuple(_renamed(const, filename) if isinstance(const, type(code)) else const for const in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _reap(channel: "_socket.socket") -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _say(channel, "ended", pid, status, round((usage.ru_utime + usage.ru_stime) * 1000, 3))


def become(request: "dict[str, Any]", fds: "list[int]") -> "tuple[Any, dict[str, Any]]":
    """In the child: become ``python3 <flags> <path> <args>``; the program's code and its globals."""
    stdin, stdout, stderr, *cgroup_files = fds
    for fd in cgroup_files:  # the run's cgroups, entered before the program allocates anything
        try:
            os.write(fd, b"0")
        except OSError:
            os._exit(125)
        os.close(fd)
    os.setsid()
    for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
        os.dup2(fd, target)
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:  # not closerange: without close_range it is 65,000 calls
        if fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass
    if not request.get("shared"):  # a shared script (the judge's harness) stays undumpable, as it would make itself
        _prctl(PR_SET_DUMPABLE, 1)  # the zygote is not, so that no run can write into it; a new python3 is
    os.chdir(request["cwd"])
    if os.environ != request["env"]:  # most often the zygote's own: left as it is, which saves a run 0.2 ms
        os.environ.clear()
        os.environ.update(request["env"])
    path = request["path"]
    absolute = os.path.abspath(path)
    sys.argv[:] = [path, *request["args"]]
    if hasattr(sys, "orig_argv"):  # 3.10+: the command line as given (/proc/self/cmdline stays the zygote's)
        sys.orig_argv = list(request["orig_argv"])
    sys.path[0] = os.path.dirname(absolute)
    for name in set(sys.modules) - _kept(request):
        del sys.modules[name]
    compiled, prepared = request["compiled"], request["prepared"]
    if prepared is not None:
        code = prepared[1]
    elif compiled is not None:
        code = compiled[1] if compiled[1].co_filename == absolute else _renamed(compiled[1], absolute)
    else:
        with open(absolute, "rb") as handle:
            code = compile(handle.read(), absolute, "exec", dont_inherit=True)
    main = sys.modules["__main__"]
    loader = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", absolute)
    namespace = main.__dict__
    builtins = namespace["__builtins__"]
    namespace.clear()  # the zygote's own globals: from here only locals are used
    namespace.update(__name__="__main__", __doc__=None, __package__=None, __loader__=loader, __spec__=None)
    namespace.update(__annotations__={}, __builtins__=builtins, __file__=absolute, __cached__=None)
    return code, namespace if prepared is None else prepared[0]


def _kept(request: "dict[str, Any]") -> "set[str]":
    """The modules a run starts with: a fresh interpreter's, and for a shared script ``os``'s too."""
    return _FRESH | _OS if request.get("shared") else _FRESH


def _main() -> None:
    """Serve; in a child, run the program as ``python3 main.py`` would, and end as it would."""
    import sys as system

    _prctl(PR_SET_DUMPABLE, 0)
    exit_status, finish = _exit_status, _finish  # the module's globals are the program's from here
    request, fds = serve(int(system.argv[1]))
    fresh = _kept(request)
    try:
        code, namespace = become(request, fds)
    except (SyntaxError, ValueError) as error:  # the program does not compile: said as python3 says it
        system.excepthook(type(error), error.with_traceback(None), None)
        finish(1, system, fresh)
    del request, fds
    try:
        exec(code, namespace)
        status = 0
    except SystemExit as exited:
        status = exit_status(exited.code, system)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise  # the interpreter's own way out: killed by SIGINT
        traceback = error.__traceback__
        error = error.with_traceback(traceback.tb_next if traceback is not None else None)  # from the program's frames
        system.excepthook(type(error), error, error.__traceback__)
        status = 1
    finish(status, system, fresh)


def _exit_status(code: object, system: "Any") -> int:
    """What the interpreter exits with for ``SystemExit(code)``: a message is printed, and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=system.stderr)
    except Exception:
        pass
    return 1


def _finish(
    status: int, system: "Any", fresh: "set[str]", run_exitfuncs: "Any" = atexit._run_exitfuncs, collect: "Any" = gc.collect, leave: "Any" = os._exit
) -> None:
    """End as Py_FinalizeEx ends a program: its threads joined, its atexit callbacks run, its
    objects torn down (``__del__`` runs, files left open are flushed and closed), its output
    flushed. Only the program's objects: those of the zygote, frozen before the fork, are not
    touched, which would copy every page the zygote shares with the run (tens of milliseconds).
    The functions it needs are bound here, in the zygote: a run need not import their modules
    again (``os``, when a new interpreter has not loaded it, took some 2 ms)."""
    threading = system.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    run_exitfuncs()
    main = system.modules["__main__"].__dict__
    for name in [name for name in main if name != "__builtins__"]:
        del main[name]
    for name in reversed([name for name in system.modules if name not in fresh]):  # the modules it imported, last first
        module = system.modules.pop(name, None)
        if module is not None and hasattr(module, "__dict__"):
            module.__dict__.clear()
    collect()
    for stream in (system.stdout, system.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            status = status or 120  # as the interpreter: its output could not be written
    leave(status)


if __name__ == "__main__":
    _main()
