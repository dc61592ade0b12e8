"""Candidate solutions to grade, as an LLM might have written them.

Each case: a task, a language, the candidate's source, the input, the output
it must print, and the verdict the grader is expected to reach.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    task: str
    language: str
    source: str
    stdin: str
    expected_stdout: str
    verdict: str = "pass"  # pass | wrong | error | timeout

    @property
    def id(self) -> str:
        return f"{self.task}-{self.language}" + ("" if self.verdict == "pass" else f"-{self.verdict}")


FIZZBUZZ_OUT = "1\n2\nFizz\n4\nBuzz\nFizz\n7\n8\nFizz\nBuzz\n11\nFizz\n13\n14\nFizzBuzz\n"

CASES = [
    Case("sum", "python", "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n", "3 4 5\n", "12\n"),
    Case("sum", "javascript",
         "const data = require('fs').readFileSync(0, 'utf8');\n"
         "console.log(data.split(/\\s+/).filter(Boolean).map(Number).reduce((a, b) => a + b, 0));\n",
         "3 4 5\n", "12\n"),
    Case("sum", "bash", "total=0\nfor n in $(cat); do total=$((total + n)); done\necho \"$total\"\n", "3 4 5\n", "12\n"),
    Case("fizzbuzz", "python",
         "n = int(input())\nfor i in range(1, n + 1):\n"
         "    print('FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else 'Buzz' if i % 5 == 0 else i)\n",
         "15\n", FIZZBUZZ_OUT),
    Case("fizzbuzz", "javascript",
         "const n = Number(require('fs').readFileSync(0, 'utf8'));\n"
         "for (let i = 1; i <= n; i++) console.log(i % 15 === 0 ? 'FizzBuzz' : i % 3 === 0 ? 'Fizz' : i % 5 === 0 ? 'Buzz' : i);\n",
         "15\n", FIZZBUZZ_OUT),
    Case("fizzbuzz", "bash",
         "read n\nfor ((i = 1; i <= n; i++)); do\n"
         "  if ((i % 15 == 0)); then echo FizzBuzz; elif ((i % 3 == 0)); then echo Fizz;\n"
         "  elif ((i % 5 == 0)); then echo Buzz; else echo $i; fi\ndone\n",
         "15\n", FIZZBUZZ_OUT),
    Case("reverse", "python", "print(' '.join(reversed(input().split())))\n", "one two three\n", "three two one\n"),
    Case("reverse", "javascript",
         "console.log(require('fs').readFileSync(0, 'utf8').trim().split(' ').reverse().join(' '));\n",
         "one two three\n", "three two one\n"),
    # candidates the grader must catch
    Case("reverse", "python", "print(' '.join(input().split()[::-1][1:]))\n", "one two three\n", "three two one\n", "wrong"),
    Case("sum", "javascript", "console.log(sum(1, 2));\n", "", "3\n", "error"),
    Case("fizzbuzz", "python", "while True:\n    pass\n", "15\n", FIZZBUZZ_OUT, "timeout"),
]  # fmt: skip
