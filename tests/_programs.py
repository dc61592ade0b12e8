"""Source programs for the language tests: text that breaks naive shell quoting.

Each program prints ``PAYLOAD`` exactly. The payload sits in the source as a
string literal (escaped only by the language's own rules) and raw in a
comment, with a line reading ``EOF``, so a heredoc or ``echo '...'`` transport
would corrupt it.
"""

from __future__ import annotations

PAYLOAD_LINES = [
    """it's "quoted" $HOME ${HOME} `whoami` $(id) \\n \\\\ back\\slash""",
    "EOF",
    "héllo wörld ✓ 日本語 🎉 'single' \"double\" %s %d {0} #{x}",
]
PAYLOAD = "".join(line + "\n" for line in PAYLOAD_LINES)
RAW = "\n".join(PAYLOAD_LINES)


def _dq(line: str, extra: str = "") -> str:
    out = line.replace("\\", "\\\\").replace('"', '\\"')
    for char in extra:
        out = out.replace(char, "\\" + char)
    return f'"{out}"'


def _block() -> str:
    return "/*\n" + RAW + "\nEOF\n*/\n"


def program(language: str) -> str:
    """A program in ``language`` printing PAYLOAD to stdout."""
    lines = PAYLOAD_LINES
    if language == "python":
        body = "".join(f"print({_dq(line)})\n" for line in lines)
        return f'"""\n{RAW}\nEOF\n"""\n{body}'
    if language in ("javascript", "typescript"):
        body = "".join(f"console.log({_dq(line, '$')});\n" for line in lines)
        typed = "const greeting: string = 'typed';\n" if language == "typescript" else ""
        return _block() + typed + body
    if language == "go":
        body = "".join(f"\tfmt.Println({_dq(line)})\n" for line in lines)
        return 'package main\n\nimport "fmt"\n\n' + _block() + "func main() {\n" + body + "}\n"
    if language == "rust":
        body = "".join(f'    println!("{{}}", {_dq(line)});\n' for line in lines)
        return _block() + "fn main() {\n" + body + "}\n"
    if language == "bash":
        return "#!/bin/bash\n# it's \"quoted\" $HOME `x`\ncat <<'MARK'\n" + RAW + "\nMARK\n"
    if language == "c":
        body = "".join(f"    puts({_dq(line, '?')});\n" for line in lines)
        return "#include <stdio.h>\n" + _block() + "int main(void) {\n" + body + "    return 0;\n}\n"
    if language == "cpp":
        body = "".join(f"    std::cout << {_dq(line, '?')} << '\\n';\n" for line in lines)
        return "#include <iostream>\n" + _block() + "int main() {\n" + body + "    return 0;\n}\n"
    if language == "java":
        body = "".join(f"        System.out.println({_dq(line)});\n" for line in lines)
        return _block() + "public class Program {\n    public static void main(String[] args) {\n" + body + "    }\n}\n"
    if language == "ruby":
        body = "".join(f"puts {_dq(line, '#')}\n" for line in lines)
        return "=begin\n" + RAW + "\nEOF\n=end\n" + body
    raise KeyError(language)


# Echo stdin (upper-cased) and the arguments, then exit 7.
ECHO = {
    "python": "import sys\nprint(sys.stdin.read().upper(), end='')\nprint('|'.join(sys.argv[1:]))\nsys.exit(7)\n",
    "javascript": "const s = require('fs').readFileSync(0, 'utf8');\nprocess.stdout.write(s.toUpperCase());\nconsole.log(process.argv.slice(2).join('|'));\nprocess.exitCode = 7;\n",
    "typescript": "import { readFileSync } from 'fs';\nconst s: string = readFileSync(0, 'utf8');\nprocess.stdout.write(s.toUpperCase());\nconsole.log(process.argv.slice(2).join('|'));\nprocess.exitCode = 7;\n",
    "go": 'package main\n\nimport (\n\t"fmt"\n\t"io"\n\t"os"\n\t"strings"\n)\n\nfunc main() {\n\tb, _ := io.ReadAll(os.Stdin)\n\tfmt.Print(strings.ToUpper(string(b)))\n\tfmt.Println(strings.Join(os.Args[1:], "|"))\n\tos.Exit(7)\n}\n',
    "rust": 'use std::io::Read;\nfn main() {\n    let mut s = String::new();\n    std::io::stdin().read_to_string(&mut s).unwrap();\n    print!("{}", s.to_uppercase());\n    let a: Vec<String> = std::env::args().skip(1).collect();\n    println!("{}", a.join("|"));\n    std::process::exit(7);\n}\n',
    "bash": 'tr a-z A-Z\n(IFS="|"; echo "$*")\nexit 7\n',
    "c": '#include <stdio.h>\n#include <ctype.h>\nint main(int argc, char **argv) {\n    int c;\n    while ((c = getchar()) != EOF) putchar(toupper(c));\n    for (int i = 1; i < argc; i++) printf("%s%s", i > 1 ? "|" : "", argv[i]);\n    printf("\\n");\n    return 7;\n}\n',
    "cpp": '#include <iostream>\n#include <string>\n#include <cctype>\nint main(int argc, char **argv) {\n    char c;\n    while (std::cin.get(c)) std::cout << (char)std::toupper(c);\n    for (int i = 1; i < argc; i++) std::cout << (i > 1 ? "|" : "") << argv[i];\n    std::cout << std::endl;\n    return 7;\n}\n',
    "java": 'public class Echo {\n    public static void main(String[] args) throws Exception {\n        String s = new String(System.in.readAllBytes());\n        System.out.print(s.toUpperCase());\n        System.out.println(String.join("|", args));\n        System.exit(7);\n    }\n}\n',
    "ruby": 'print STDIN.read.upcase\nputs ARGV.join("|")\nexit 7\n',
}
ECHO_STDIN = "hello 'x' $HOME\n"
ECHO_ARGS = ["a b", "$HOME", "it's"]
ECHO_OUT = "HELLO 'X' $HOME\n" + "|".join(ECHO_ARGS) + "\n"

BROKEN = {
    "go": "package main\n\nfunc main() { undefined_thing() }\n",
    "rust": 'fn main() { let x: i32 = "no"; }\n',
    "c": "int main(void) { return undefined_thing; }\n",
    "cpp": "int main() { return undefined_thing; }\n",
    "java": 'public class Broken { public static void main(String[] a) { int x = "no"; } }\n',
    "typescript": "const x: number = ;\n",
}
BROKEN_MARK = {"go": "undefined", "rust": "mismatched types", "c": "undefined_thing", "cpp": "undefined_thing", "java": "incompatible types", "typescript": ""}

EXTENSIONS = {
    "python": "py",
    "javascript": "js",
    "typescript": "ts",
    "go": "go",
    "rust": "rs",
    "bash": "sh",
    "c": "c",
    "cpp": "cpp",
    "java": "java",
    "ruby": "rb",
}
LANGUAGES = list(EXTENSIONS)
