"""Import rules between the study's stages, search_spaces and the service, read from source.

Every .py under study/, search_spaces/ and service/ is parsed with ``ast``;
nothing is imported or executed. The rules:

(a) ``service`` reaches the study only through ``study.serving``, and only for
    names that module exports (type-only imports included: the seam is the seam).
(b) Within the study, stages are ordered data < models < gate < search < select < report:
    a stage imports its own or a lower stage at run time, never a higher one, and
    never the modules that drive or expose the stages (study.config, study.cli,
    study.workflow, study.serving). Anyone may import the foundation modules
    ``study.paths``, ``study.fmt`` and ``study.keras_compat``. Neither the
    study nor ``search_spaces`` imports the service.
(c) ``search_spaces`` imports from the study only ``study.models`` and ``study.paths``.
(d) The package-level graph (each stage, each top-level study module,
    ``search_spaces``, ``service``) has no cycle.

Imports under ``if TYPE_CHECKING:`` are not run-time imports and are ignored by
(b), (c) and (d). Every failure names the offending file:line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("study", "search_spaces", "service")
STAGES = ("data", "models", "gate", "search", "select", "report")
SEAM = "study.serving"
# Top-level modules above every stage: they drive the stages or expose them to the service.
ABOVE_STAGES = ("study.config", "study.cli", "study.workflow", SEAM)


@dataclass(frozen=True)
class Edge:
    """One imported module (or one name from the seam) at one source line."""

    src: str  # importing module, e.g. "study.data.cache"
    dst: str  # imported module, e.g. "study.data.preprocess"
    where: str  # "study/data/cache.py:23"
    type_only: bool  # under `if TYPE_CHECKING:`
    names: tuple[str, ...] = ()  # for `from X import a, b`: the names taken from X


# --------------------------------------------------------------------------- reading source


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _walk(node: ast.AST, type_only: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement, at any depth (functions too), with its TYPE_CHECKING flag."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, type_only
    elif isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            yield from _walk(child, True)
        for child in node.orelse:
            yield from _walk(child, type_only)
        return
    for child in ast.iter_child_nodes(node):
        yield from _walk(child, type_only)


def _base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def edges_of(
    source: str, module: str, file: str, is_package: bool = False, known: Iterable[str] = ()
) -> list[Edge]:
    """Imports of project modules in one file; ``known`` tells submodules from names."""
    known = set(known)
    out: list[Edge] = []
    for node, type_only in _walk(ast.parse(source, filename=file), False):
        where = f"{file}:{node.lineno}"
        if isinstance(node, ast.Import):
            targets = [(a.name, ()) for a in node.names]
        else:
            base = _base(node, module, is_package)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            names = tuple(a.name for a in node.names if f"{base}.{a.name}" not in known)
            targets = [(sub, ()) for sub in subs] + ([(base, names)] if names else [])
        for dst, names in targets:
            if dst.split(".")[0] in ROOTS:
                out.append(Edge(module, dst, where, type_only, names))
    return out


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def project_files() -> dict[str, Path]:
    files = sorted(p for root in ROOTS for p in (REPO / root).rglob("*.py"))
    return {_module_name(p): p for p in files}


@cache
def project_edges() -> tuple[Edge, ...]:
    files = project_files()
    out: list[Edge] = []
    for module, path in files.items():
        rel = path.relative_to(REPO).as_posix()
        out += edges_of(path.read_text(), module, rel, path.name == "__init__.py", files)
    return tuple(out)


def exported_names(source: str) -> set[str]:
    """The string literals of a module's ``__all__`` list or tuple."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return {e.value for e in node.value.elts if isinstance(e, ast.Constant)}  # type: ignore[attr-defined]
    return set()


# --------------------------------------------------------------------------- the rules


def _top(module: str) -> str:
    return module.split(".")[0]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "study" and parts[1] in STAGES else None


def service_violations(edges: Iterable[Edge], seam_names: set[str]) -> list[str]:
    """(a) service -> study only through the seam, only for names it exports."""
    out = []
    for e in edges:
        if _top(e.src) != "service" or _top(e.dst) != "study":
            continue
        if not _within(e.dst, SEAM):
            out.append(f"{e.where}: service imports {e.dst}; it may import only {SEAM}")
        elif missing := sorted(set(e.names) - seam_names):
            out.append(f"{e.where}: {SEAM} does not export {', '.join(missing)} (__all__)")
    return out


def stage_violations(edges: Iterable[Edge]) -> list[str]:
    """(b) run-time imports follow data < models < gate < search < select < report; no service."""
    out = []
    for e in edges:
        if e.type_only:
            continue
        if _top(e.src) in ("study", "search_spaces") and _top(e.dst) == "service":
            out.append(f"{e.where}: {e.src} imports the service ({e.dst})")
        src, dst = stage_of(e.src), stage_of(e.dst)
        if src is None or _top(e.dst) != "study":
            continue
        if dst is not None and STAGES.index(dst) > STAGES.index(src):
            out.append(f"{e.where}: stage {src} imports the higher stage {dst} ({e.dst})")
        elif any(_within(e.dst, top) for top in ABOVE_STAGES):
            out.append(f"{e.where}: stage {src} imports {e.dst}, which sits above the stages")
    return out


def search_space_violations(edges: Iterable[Edge]) -> list[str]:
    """(c) search_spaces -> study.models and study.paths only (at run time)."""
    return [
        f"{e.where}: search_spaces imports {e.dst}; only study.models and study.paths"
        for e in edges
        if not e.type_only
        and _top(e.src) == "search_spaces"
        and _top(e.dst) == "study"
        and not (_within(e.dst, "study.models") or e.dst == "study.paths")
    ]


def package_of(module: str) -> str:
    """The graph node: a stage, a top-level study module, search_spaces or service."""
    if _top(module) != "study":
        return _top(module)
    stage = stage_of(module)
    return f"study.{stage}" if stage else ".".join(module.split(".")[:2])


def cycle_violations(edges: Iterable[Edge]) -> list[str]:
    """(d) every group of packages that import each other, with the imports that close it."""
    first: dict[tuple[str, str], str] = {}
    for e in edges:
        a, b = package_of(e.src), package_of(e.dst)
        if not e.type_only and a != b:
            first.setdefault((a, b), e.where)
    graph: dict[str, set[str]] = {}
    for a, b in first:
        graph.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {n: reach(n) for n in graph}
    out, done = [], set()
    for n in sorted(graph):
        group = {m for m in reachable[n] if n in reachable.get(m, set())} | {n}
        if n in done or len(group) < 2:
            continue
        done |= group
        links = [f"{first[k]} ({k[0]} -> {k[1]})" for k in sorted(first) if set(k) <= group]
        out.append(f"import cycle {sorted(group)}: " + "; ".join(links))
    return out


# --------------------------------------------------------------------------- the tests


def _fail(violations: list[str]) -> str:
    return "\n".join(violations)


def test_service_imports_only_the_serving_seam() -> None:
    seam = exported_names(project_files()[SEAM].read_text())
    assert seam, "study/serving.py has no __all__"
    violations = service_violations(project_edges(), seam)
    assert not violations, _fail(violations)


def test_study_stage_order() -> None:
    violations = stage_violations(project_edges())
    assert not violations, _fail(violations)


def test_search_spaces_depend_on_models_only() -> None:
    violations = search_space_violations(project_edges())
    assert not violations, _fail(violations)


def test_no_package_cycles() -> None:
    violations = cycle_violations(project_edges())
    assert not violations, _fail(violations)


def test_the_rules_catch_violations() -> None:
    """Synthetic sources: each rule reports what it must, at the right file:line."""
    known = {"study.serving", "study.config", "study.data.preprocess", "study.select.model_io"}
    svc = "import os\nfrom study.serving import decode, secret\n\ndef f():\n    import study.data\n"
    edges = edges_of(svc, "service.x", "service/x.py", known=known)
    assert service_violations(edges, {"decode"}) == [
        "service/x.py:2: study.serving does not export secret (__all__)",
        "service/x.py:5: service imports study.data; it may import only study.serving",
    ]
    data = (
        "from typing import TYPE_CHECKING\nfrom study.paths import REPO\n"
        "if TYPE_CHECKING:\n    from study.config import C\n"
        "def f():\n    from ..select import model_io\n    from study import config\n"
    )
    edges = edges_of(data, "study.data.cache", "study/data/cache.py", known=known)
    assert stage_violations(edges) == [
        "study/data/cache.py:6: stage data imports the higher stage select (study.select.model_io)",
        "study/data/cache.py:7: stage data imports study.config, which sits above the stages",
    ]
    space = "from study.models.layers import X\nfrom study.data.preprocess import scale\n"
    edges = edges_of(space, "search_spaces.a", "search_spaces/a.py", known=known)
    assert [v.split(":")[:2] for v in search_space_violations(edges)] == [
        ["search_spaces/a.py", "2"]
    ]
    loop = edges_of("import service.api\n", "study.cli", "study/cli.py")
    loop += edges_of("from study.serving import decode\n", "service.api", "service/api.py")
    loop += edges_of("import study.cli\n", "study.serving", "study/serving.py")
    (cycle,) = cycle_violations(loop)
    assert "['service', 'study.cli', 'study.serving']" in cycle and "study/cli.py:1" in cycle
    assert stage_violations(loop[:1]) == [
        "study/cli.py:1: study.cli imports the service (service.api)"
    ]


MAX_FUNCTION_LINES = 60


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """Lines of code in a function: no blank lines, comments or docstring."""
    skip: set[int] = set()
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(
        1
        for n in range(node.lineno, node.end_lineno + 1)
        if n not in skip and lines[n - 1].strip() and not lines[n - 1].strip().startswith("#")
    )


def long_functions(source: str, where: str) -> list[str]:
    lines = source.splitlines()
    return [
        f"{where}:{n.lineno} {n.name} has {count} lines of code"
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and (count := _code_lines(n, lines)) > MAX_FUNCTION_LINES
    ]


def test_no_function_outside_tests_exceeds_60_lines_of_code() -> None:
    files = [p for root in (*ROOTS, "benchmarks") for p in (REPO / root).rglob("*.py")]
    found = [
        msg
        for path in files
        for msg in long_functions(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert not found, "\n".join(found)


def test_long_function_check_can_fail() -> None:
    body = "\n".join(f"    x{i} = {i}  # a comment\n\n    # another" for i in range(59))
    assert long_functions(f'def f():\n    """Doc."""\n{body}\n', "m.py") == []
    longer = f"{body}\n    y = 1\n    z = 2"
    assert long_functions(f"def g():\n{longer}\n", "m.py") == ["m.py:1 g has 62 lines of code"]
