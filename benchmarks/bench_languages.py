"""run_code hello-world per language vs the same build and run straight on the host.

Both sides are measured in the same run, interleaved, with the same argv
(the language registry's recipe), each iteration in a fresh directory:
the sandbox side includes writing the source through the file API, the
toolchain check (cached per sandbox), each step's round trip to the agent,
and removing the run directory. Sandbox creation is reported apart (it is
paid once per sandbox, not per program).

    python benchmarks/bench_languages.py [-n 7] [language ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from sandboxes import languages as langs
from sandboxes import sync

TARGET = 1.3

HELLO = {
    "python": 'print("hello")\n',
    "javascript": 'console.log("hello")\n',
    "typescript": 'const s: string = "hello";\nconsole.log(s)\n',
    "go": 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello") }\n',
    "rust": 'fn main() { println!("hello"); }\n',
    "bash": "echo hello\n",
    "c": '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n',
    "cpp": '#include <iostream>\nint main() { std::cout << "hello" << std::endl; }\n',
    "java": 'public class Main { public static void main(String[] a) { System.out.println("hello"); } }\n',
    "ruby": 'puts "hello"\n',
}


def host_run(language: langs.Language, code: str) -> float:
    """Write, build and run on the host, as a user would: seconds taken."""
    recipe = next(r for r in language.recipes if all(shutil.which(t) for t in r.requires))
    started = time.perf_counter()
    directory = tempfile.mkdtemp(prefix="bench-host-")
    try:
        with open(os.path.join(directory, language.source), "w") as f:
            f.write(code)
        values = {"src": language.source, "out": "./main.bin", "dir": directory}
        env = {**os.environ, **{k: v.format_map(values) for k, v in language.env}}
        for step in (*recipe.build, recipe.run):
            argv = [part.format_map(values) for part in step]
            done = subprocess.run(argv, cwd=directory, env=env, capture_output=True)
            if done.returncode != 0:
                raise RuntimeError(f"host {language.name} failed: {done.stderr.decode()[-500:]}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return time.perf_counter() - started


def sandbox_run(sandbox: sync.Sandbox, language: langs.Language, code: str) -> float:
    started = time.perf_counter()
    result = sandbox.run_code(code, language.name, timeout=120)
    elapsed = time.perf_counter() - started
    if result.stdout != "hello\n":
        raise RuntimeError(f"sandbox {language.name} failed: {result.describe()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--iterations", type=int, default=7)
    parser.add_argument("languages", nargs="*", default=list(HELLO))
    options = parser.parse_args()
    started = time.perf_counter()
    sandbox = sync.Sandbox.create("local")
    create_ms = (time.perf_counter() - started) * 1000
    print(f"sandbox creation (once, not in the ratios): {create_ms:.0f} ms")
    print(f"{'language':<11} {'host ms':>8} {'sandbox ms':>11} {'ratio':>6}  first sandbox run ms")
    worst = 0.0
    try:
        for name in options.languages:
            language = langs.get_language(name)
            code = HELLO[language.name]
            first = sandbox_run(sandbox, language, code) * 1000  # cold: toolchain check, empty build cache
            host_run(language, code)  # warm the host the same way
            host, boxed = [], []
            for _ in range(options.iterations):
                host.append(host_run(language, code))
                boxed.append(sandbox_run(sandbox, language, code))
            h, s = statistics.median(host) * 1000, statistics.median(boxed) * 1000
            ratio = s / h
            worst = max(worst, ratio)
            flag = "" if ratio <= TARGET else "  over target"
            print(f"{language.name:<11} {h:8.1f} {s:11.1f} {ratio:6.2f}  {first:.0f}{flag}", flush=True)
    finally:
        sandbox.destroy()
    print(f"worst ratio {worst:.2f} (target <= {TARGET})")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
