"""Programs that forged a pass against earlier judge harnesses (found by red teams), kept as regressions."""

RED_TEAM = {
    "the harness's os.write patched to rewrite its report": """\
import os as _os
_real_write = _os.write
def _w(fd, data):
    if fd == 2 and b"judge-outcome:" in data:
        line = data.decode()
        i = line.index("judge-outcome:")
        nonce = line[i:].split(":")[1]
        _real_write(2, ("\\njudge-outcome:%s:completed:\\n" % nonce).encode())
        _os._exit(0)
    return _real_write(fd, data)
_os.write = _w
""",
    "threading.get_ident faked to reach the main thread's frames": """\
import threading as _t, sys as _s, os as _o
_mid = _t.main_thread().ident
_real = _t.get_ident
_t.get_ident = lambda: _mid     # the hook now thinks every call is the judge's own
_fr = _s._current_frames()[_mid]
_f = _fr
while _f is not None and "nonce" not in _f.f_locals:
    _f = _f.f_back
_n = _f.f_locals["nonce"]
_o.write(2, ("\\njudge-outcome:%s:completed:\\n" % _n).encode())
_o._exit(0)
""",
    "sys._getframe faked to pass a frame check": """\
import sys as _s
_me = _s._getframe(0)
_c1 = _me.f_back.f_code; _c2 = _me.f_back.f_back.f_code; _c3 = _me.f_back.f_back.f_back.f_code
class _F:
    def __init__(s, c, b): s.f_code, s.f_back = c, b
_fake = _F(_c1, _F(_c2, _F(_c3, None)))
_real = _s._getframe
_s._getframe = lambda n=0: _fake
_s.audit("judge.completed")
_s._getframe = _real
""",
    "the harness's runner driven on harmless code": """\
import sys as _s, threading as _t
_g = _s._getframe(0).f_back.f_globals      # the harness's own module globals
_R = _g["_Runner"]
_r = _R(daemon=True)
_r.work = (compile("pass", "x", "exec"), compile("pass", "y", "exec"), type(_s)("m"), [])
_r._set_tstate_lock = lambda: None         # leave the real runner's thread bookkeeping alone
_r._delete = lambda: None
_t._limbo[_r] = _r
_orig = _t._active[_t.get_ident()]
_t.Thread._bootstrap_inner(_r)   # genuine _run <- genuine _Runner.run <- genuine _bootstrap_inner, same thread
_t._active[_t.get_ident()] = _orig
""",
    "the main thread interrupted, its traceback read": """\
import sys as _s, os as _o, _thread
def _hook(tp, val, tb):
    while tb is not None:
        loc = tb.tb_frame.f_locals
        if "nonce" in loc:
            _o.write(2, ("\\njudge-outcome:%s:completed:\\n" % loc["nonce"]).encode()); _o._exit(0)
        tb = tb.tb_next
    _o._exit(3)
_s.excepthook = _hook
_thread.interrupt_main()
import time; time.sleep(5)
""",
    "stdlib modules planted in the run directory for the judge to import": '''\
def add(a, b):
    return a - b

import os as _os, time as _time
_PAYLOAD = """
import sys as _s, os as _o
_f = _s._getframe()
while _f is not None:
    _n = _f.f_locals.get('nonce')
    if isinstance(_n, str) and len(_n) > 20:
        _o.write(2, ("\\\\njudge-outcome:%s:completed:\\\\n" % _n).encode())
        _o._exit(0)
    _f = _f.f_back
"""
_d = _os.path.dirname(_os.path.abspath(__file__))
for _m in ("linecache", "traceback"):
    with open(_os.path.join(_d, _m + ".py"), "w") as _h:
        _h.write(_PAYLOAD)
_time.sleep(0.05)
open(_os.path.join(_d, ".bump"), "w").close(); _os.unlink(_os.path.join(_d, ".bump"))
''',
    "the judge report rewritten through its memory, opened before it was hardened": """\
import os as _o, sys as _s
try:
    _fd = _o.open("/proc/%d/mem" % _o.getppid(), _o.O_RDWR)
    for _k in ("assertion", "exception"):
        _o.pwrite(_fd, b"completed", id(_k) + _s.getsizeof(_k) - len(_k) - 1)
except OSError:
    pass
""",
}
