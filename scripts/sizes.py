"""Size limits of the code: a module or class over 450 lines, or a function over 100, is reported.

Usage: python scripts/sizes.py castore     (exit 1 when any unit is over its limit)
"""

import ast
import pathlib
import sys

bad = 0
for p in sorted(pathlib.Path(sys.argv[1]).rglob("*.py")):
    if "_pb" in p.parts:
        continue
    src = p.read_text()
    n = src.count("\n")
    if n > 450:
        print(f"{p}: module {n} lines")
        bad += 1
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = 450 if isinstance(node, ast.ClassDef) else 100
            if length > limit:
                print(f"{p}:{node.lineno} {node.name} {length} lines")
                bad += 1
sys.exit(1 if bad else 0)
