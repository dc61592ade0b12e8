"""The judge's harness: runs a Python program and its embedded tests, and reports the verdict.

Written into the sandbox by ``sandboxes.judging`` and run there as ``python3 -S
_judge_harness.py`` by the sandbox's own interpreter (any from 3.8): standard
library only, and nothing newer than 3.8 has. Not imported by the package.

Its body defines, and depends on nothing of a run's (not the working
directory, the arguments or the environment): the local provider's warm
interpreter may run it once and then, for each run, only call
``__sandbox_main__`` (see ``providers/local/_zygote.py``).
"""

# Few imports, all built in: each is paid for by every judged program (not even types: 0.8 ms).
import marshal
import os
import sys

_ModuleType = type(sys)

# The judge imports from the standard library only: not from its run directory or PYTHONPATH, where the
# program can write (a planted traceback.py would run in the judge's process). The program gets them back.
_BASES = tuple(os.path.realpath(base) + os.sep for base in {sys.base_prefix, sys.base_exec_prefix})


def _standard_library(entries):
    return [entry for entry in entries if (os.path.realpath(entry) + os.sep).startswith(_BASES)]


_LIBRARY = (list(sys.path[1:]), _standard_library(sys.path[1:]))  # the path after the script's directory, and what the judge keeps of it
_PROGRAM_PATH = []

# Two processes. The child runs the program (untrusted) and serves calls into it.
# The parent runs the tests (trusted code) against proxies of the program's names,
# so every value it compares is plain data it decoded itself: no object of the
# program's (an __eq__ that always agrees) reaches the tests, and nothing the
# program does (patching os, sys, threading; reading frames or memory) reaches
# the parent, which holds the nonce, reads it only after the fork, and is not
# dumpable. A pass is the parent's report, made after the tests returned.

_PLAIN = (type(None), bool, int, float, str, bytes, complex, list, tuple, dict, set, frozenset)


class Unplain(TypeError):
    pass


def _plain(value, depth=0):
    # Exact built-in types all the way down: no subclass, no object of the program's.
    kind = type(value)
    if depth > 200 or kind not in _PLAIN:
        raise Unplain(f"a value of type {kind.__name__}, not plain data (numbers, text, lists, tuples, dicts, sets)")
    if kind in (list, tuple, set, frozenset):
        for item in value:
            _plain(item, depth + 1)
    elif kind is dict:
        for key, item in value.items():
            _plain(key, depth + 1)
            _plain(item, depth + 1)
    return value


def _send(fd, message):
    data = marshal.dumps(message)
    view = memoryview(len(data).to_bytes(8, "big") + data)
    while view:
        view = view[os.write(fd, view) :]


def _receive(stream):
    header = stream.read(8)
    if len(header) < 8:
        return None
    data = stream.read(int.from_bytes(header, "big"))
    return marshal.loads(data)


# -- the child: the program, and calls into it --------------------------------------------------
def _child(code, source_path, requests, answers):
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # before any of the program's code: the nonce comes on the parent's stdin
    sys.argv = ["main.py"]
    sys.path[:] = [os.path.dirname(source_path), *_PROGRAM_PATH[1:]]
    module = _ModuleType("__main__")  # the program's module is __main__, as under python3 main.py
    module.__file__ = source_path
    sys.modules["__main__"] = module
    sys.meta_path.append(_LazySite())
    import builtins

    if not all(hasattr(builtins, name) for name in ("exit", "quit", "copyright", "credits", "license", "help")):  # warm, the zygote's site made them
        import site  # with -S, its module only: the builtins it adds, without the .pth files (0.3 ms)

        site.setquit()
        site.setcopyright()
        site.sethelper()
    try:
        exec(code, module.__dict__)
    except SystemExit as exited:
        _send(answers, {"loaded": "exit", "detail": _status(exited.code)})
        _leave(0)
    except BaseException as error:
        _print_error(error, source_path)
        _send(answers, {"loaded": "error", "type": type(error).__name__, "assertion": isinstance(error, AssertionError)})
        _leave(0)
    names = {}
    for name, value in list(module.__dict__.items()):
        if isinstance(value, _ModuleType):
            names[name] = "module:" + value.__name__
        elif callable(value):
            names[name] = "callable"
        else:
            names[name] = "value"
    _send(answers, {"loaded": "ok", "names": names})
    stream = os.fdopen(requests, "rb")
    while True:
        request = _receive(stream)
        if request is None or request.get("op") == "end":
            _leave(0)
        try:
            target = module.__dict__[request["name"]]
            if request["op"] == "call":
                value = target(*request["args"], **request["kwargs"])
            else:
                value = target
            answer = {"value": _plain(value)}
        except SystemExit as exited:
            _send(answers, {"exit": _status(exited.code)})
            _leave(0)
        except Unplain as error:
            answer = {"unplain": str(error)}
        except BaseException as error:
            _print_error(error, source_path)
            answer = {"raised": type(error).__name__, "message": str(error)[:2000], "builtin": getattr(__builtins__, type(error).__name__, None) is type(error)}
        _send(answers, answer)


def _leave(status):
    for stream in (sys.stdout, sys.stderr):  # what the program printed is not lost
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status)


def _status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _print_error(error, source_path):
    import traceback

    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != source_path:
        tb = tb.tb_next
    traceback.print_exception(type(error), error, tb)


class _LazySite:
    # Started with -S: the site-packages are set up when the program first imports something the
    # standard library does not have (as python3 main.py has them), not paid for by every program.
    def find_spec(self, name, path=None, target=None):
        if path is not None or self not in sys.meta_path:
            return None
        sys.meta_path.remove(self)
        import importlib.util
        import site

        site.main()
        return importlib.util.find_spec(name)


# -- the parent: the tests, against proxies -------------------------------------------------------------
class ProgramEnded(Exception):
    pass


class Unsupported(Exception):
    pass


class _Program:
    def __init__(self, requests, answers):
        self.requests = requests
        self.answers = os.fdopen(answers, "rb")

    def ask(self, message):
        try:
            _send(self.requests, message)
        except OSError:
            raise ProgramEnded("the program's process ended while the tests ran") from None
        try:
            answer = _receive(self.answers)
        except (ValueError, EOFError, TypeError):
            raise ProgramEnded("the program's process sent the judge something it cannot read") from None
        if answer is None:
            raise ProgramEnded("the program's process ended while the tests ran")
        if not isinstance(answer, dict):
            raise ProgramEnded("the program's process sent the judge something it cannot read")
        if "exit" in answer:
            raise ProgramEnded("the program exited (status {}) while the tests ran".format(answer["exit"]))
        if "unplain" in answer:
            raise ProgramEnded("it returned {}".format(answer["unplain"]))
        if "raised" in answer:
            kind = getattr(__builtins__, answer["raised"], None) if answer.get("builtin") else None
            if kind in (StopIteration, StopAsyncIteration):  # as in a generator (PEP 479): it would end a map() or filter() of the tests' as if exhausted
                raise RuntimeError("the program raised {}: {}".format(answer["raised"], answer["message"]))
            if isinstance(kind, type) and issubclass(kind, Exception) and kind is not AssertionError:
                raise kind(answer["message"])
            raise ProgramEnded("{} raised by the program".format(answer["raised"]))
        try:
            return _plain(answer["value"])  # checked again here: the program's process may answer anything
        except (Unplain, RecursionError) as error:
            raise ProgramEnded(f"it returned {error}") from None


class _Function:
    def __init__(self, program, name):
        self.program, self.__name__ = program, name

    def __call__(self, *args, **kwargs):
        try:
            payload = {"op": "call", "name": self.__name__, "args": _plain(args), "kwargs": _plain(kwargs)}
        except Unplain as error:
            raise Unsupported(f"the tests pass the program {error}, which the judge cannot send to it") from None
        return self.program.ask(payload)


_BUILTIN_NAMES = frozenset(dir(__builtins__))


class _Namespace(dict):
    def __init__(self, program, names):
        super().__init__(__name__="__main__", __builtins__=__builtins__)
        self.program, self.names = program, names

    def __missing__(self, name):
        kind = self.names.get(name)
        if kind is None or name in _BUILTIN_NAMES:  # a program's abs or len never stands in for the tests' builtins
            raise KeyError(name)
        if kind.startswith("module:"):
            import importlib

            value = importlib.import_module(kind[7:])
        elif kind == "callable":
            value = _Function(self.program, name)
        else:
            value = self.program.ask({"op": "get", "name": name})
        self[name] = value
        return value


def _main():
    cwd = os.getcwd()
    source_path = os.path.join(cwd, "main.py")
    tests_path = os.path.join(cwd, "_judge_tests.py")
    with open(source_path, "rb") as handle:
        source = handle.read()
    # The tests' text and code are made only in this process, after the fork: the program's process,
    # a copy of this one, would find them in its memory (in this frame, up its own stack). Their file
    # goes before the program runs, and the program's process closes this descriptor first.
    tests_file = os.open(tests_path, os.O_RDONLY)
    os.unlink(tests_path)
    try:
        code = compile(source, source_path, "exec")
    except (SyntaxError, ValueError) as error:
        os.close(tests_file)
        nonce = _read_nonce()
        import traceback

        traceback.print_exception(type(error), error, None)
        return _report(nonce, "compile", type(error).__name__)
    _undumpable()  # before the fork, so that no moment exists when the program could open this process's memory
    to_child, requests = os.pipe()
    answers, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(tests_file)
        os.close(requests)
        os.close(answers)
        _child(code, source_path, to_child, to_parent)
        os._exit(0)
    os.close(to_child)
    os.close(to_parent)
    try:
        with os.fdopen(tests_file, "rb") as handle:
            tests_source = handle.read()
        tests = compile(tests_source, tests_path, "exec")
    except BaseException:  # tests that do not compile are the caller's error: said as before, the program ended
        os.kill(pid, 9)
        _reap(pid)
        raise
    nonce = _read_nonce()
    program = _Program(requests, answers)
    try:
        loaded = _receive(program.answers)
    except (ValueError, EOFError, TypeError, OSError):
        loaded = None
    loaded = _well_formed(loaded)
    if loaded is None:
        return _ended(nonce, pid, "vanished")
    if loaded["loaded"] == "exit":
        _reap(pid)
        return _report(nonce, "exit", str(loaded.get("detail")))
    if loaded["loaded"] == "error":
        _reap(pid)
        return _report(nonce, "assertion" if loaded.get("assertion") is True else "exception", str(loaded.get("type")))
    namespace = _Namespace(program, loaded["names"])
    try:
        exec(tests, namespace)
    except Unsupported as error:
        return _report(nonce, "unsupported", str(error))
    except ProgramEnded as error:
        return _report(nonce, "ended", str(error))
    except BaseException as error:
        import linecache
        import traceback

        # the file is gone (the program must not read it): its lines, for the traceback
        linecache.cache[tests_path] = (len(tests_source), None, tests_source.decode("utf-8", "replace").splitlines(True), tests_path)
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != tests_path:
            tb = tb.tb_next
        traceback.print_exception(type(error), error, tb)
        return _report(nonce, "assertion" if isinstance(error, AssertionError) else "exception", type(error).__name__)
    try:
        _send(requests, {"op": "end"})
    except OSError:
        pass
    _reap(pid)
    return _report(nonce, "completed")


def _well_formed(loaded):
    # What the program's process says once the program ran: one of three, and with "ok" its names.
    if not isinstance(loaded, dict) or loaded.get("loaded") not in ("ok", "exit", "error"):
        return None
    if loaded["loaded"] == "ok" and not (isinstance(loaded.get("names"), dict) and all(isinstance(v, str) for v in loaded["names"].values())):
        return None
    return loaded


def _reap(pid, grace=2.0):
    # The program's process ends by itself when told; one that does not is killed. Waited for
    # through a pidfd where there is one (Linux 5.3, Python 3.9), not by polling: no sleep.
    try:
        import select

        handle = os.pidfd_open(pid)
    except (AttributeError, ImportError, OSError):
        handle = None
    if handle is not None:
        try:
            if not select.select([handle], [], [], grace)[0]:
                os.kill(pid, 9)
        finally:
            os.close(handle)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    import time

    deadline = time.monotonic() + grace
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(0.001)


def _ended(nonce, pid, kind):
    return _report(nonce, kind, str(_reap(pid, grace=0.5)))


def _read_nonce():
    wanted, got = 49, b""
    while len(got) < wanted:
        part = os.read(0, wanted - len(got))
        if not part:
            break
        got += part
    return got[:48].decode("ascii", "replace")


def _undumpable():
    # The program's process (same user) can neither read nor write this one's memory, where the nonce and
    # the report are. Its own process inherits this, which only closes its /proc files to others.
    # Through _ctypes alone: importing ctypes would cost each run some 2 ms. Forked warm, the harness
    # is undumpable already: proc(5) gives such a process's files to root, not to its own user.
    euid = os.geteuid()
    if euid != 0 and os.stat("/proc/self/status").st_uid != euid:
        return
    try:
        import _ctypes

        class Long(_ctypes._SimpleCData):
            _type_ = "l"

        class Function(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL
            _restype_ = Long

        class Libc:
            _handle = _ctypes.dlopen(None)

        Function(("prctl", Libc()))(Long(4), Long(0), Long(0), Long(0), Long(0))  # PR_SET_DUMPABLE, 0
    except Exception:
        pass


def _report(nonce, kind, detail=""):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(2, ("\njudge-outcome:{}:{}:{}\n".format(nonce, kind, detail.replace("\n", " "))).encode("utf-8", "replace"))
    return 0 if kind == "completed" else 1


def __sandbox_main__():
    global _PROGRAM_PATH
    _PROGRAM_PATH = list(sys.path)
    rest, library = _LIBRARY
    sys.path[:] = library if sys.path[1:] == rest else _standard_library(sys.path[1:])
    os._exit(_main())  # all said and flushed (_report): nothing of the judge's own to tear down


if __name__ == "__main__":
    __sandbox_main__()
