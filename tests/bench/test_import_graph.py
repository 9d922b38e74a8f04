"""No import cycles among the bench.* and slurm.* modules.

Every import statement counts: top-level ones and those inside functions (a lazy import still ties
the two modules together). A package's implicit import of its parent `__init__` is not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("bench", "slurm")
# the runner's modules (executors, chains, following, status): no cycle may pass through them
RUNNER_MODULES = ("bench.run", "bench.runner", "bench.chain", "bench.follow", "bench.execute", "bench.status",
                  "bench.job", "bench.plan")


def module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the bench.*/slurm.* modules it imports anywhere in its file."""
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `from bench.store import cell_id` -> bench.store
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles_through(graph: dict[str, set[str]], start: str) -> list[list[str]]:
    """Every simple path start -> ... -> start (depth-first)."""
    found, stack = [], [(start, [start])]
    while stack:
        node, path = stack.pop()
        for target in sorted(graph[node]):
            if target == start:
                found.append(path + [start])
            elif target not in path:
                stack.append((target, path + [target]))
    return found


def all_cycles(graph: dict[str, set[str]]) -> list[str]:
    seen, out = set(), []
    for module in sorted(graph):
        for cycle in cycles_through(graph, module):
            key = frozenset(cycle)
            if key not in seen:
                seen.add(key)
                out.append(" -> ".join(cycle))
    return out


def test_the_graph_sees_lazy_imports_and_finds_a_cycle():
    """The walker itself: a function-level import counts, and a two-module loop is reported."""
    graph = import_graph()
    assert "bench.runner" in graph["bench.execute"]  # imported inside build_runner only
    assert "bench.store" in graph["bench.runner"]
    looped = {**graph, "bench.store": graph["bench.store"] | {"bench.runner"}}
    assert "bench.runner -> bench.store -> bench.runner" in all_cycles(looped)


def test_no_import_cycle_passes_through_the_runner_modules():
    graph = import_graph()
    cycles = [" -> ".join(c) for module in RUNNER_MODULES for c in cycles_through(graph, module)]
    assert cycles == []


def test_bench_and_slurm_modules_import_each_other_in_no_cycle():
    assert all_cycles(import_graph()) == []
