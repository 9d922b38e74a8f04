"""Executors are asked, never named: no comparison with an executor name outside the registry, and one
function builds the runner."""

from __future__ import annotations

import ast
from pathlib import Path

from slurm.executors import EXECUTIONS

REPO = Path(__file__).resolve().parents[2]
REGISTRY = REPO / "slurm" / "executors.py"
NAMES = set(EXECUTIONS)  # not "auto": suites have options whose value may be auto


def source_files() -> list[Path]:
    return sorted(p for package in ("bench", "slurm") for p in (REPO / package).rglob("*.py"))


def name_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing something with an executor name (==, !=, in, not in a literal holding one)."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        literals = [elt for operand in operands
                    for elt in (operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand])]
        if any(isinstance(lit, ast.Constant) and lit.value in NAMES for lit in literals):
            lines.append(node.lineno)
    return lines


def test_the_check_finds_a_name_comparison():
    tree = ast.parse('if executor == "slurm" or kind in ("local", "x"):\n    pass\nif mode != "array":\n    pass')
    assert name_comparisons(tree) == [1, 1]


def test_no_executor_name_is_compared_outside_the_registry():
    found = [f"{path.relative_to(REPO)}:{line}" for path in source_files() if path != REGISTRY
             for line in name_comparisons(ast.parse(path.read_text()))]
    assert found == []


def test_one_function_builds_the_runner():
    builders = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Runner":
                enclosing = [f.name for f in ast.walk(ast.parse(path.read_text()))
                             if isinstance(f, ast.FunctionDef) and f.lineno <= node.lineno <= f.end_lineno]
                builders.append(f"{path.relative_to(REPO)}:{'/'.join(enclosing)}")
    assert builders == ["bench/execute.py:build_runner"]
