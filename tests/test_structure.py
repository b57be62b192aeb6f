"""The code's shape, read from the source with ``ast`` (nothing is imported): the import graph of
fmllm_tui, checks/ and fixes/ (installed as fmllm_tui.checks and fmllm_tui.fixes), and how long
each function is. Issue 18's "Done when", as tests:

(a) no module outside fmllm_tui/runner/ imports fmllm_tui.runner, except the few that launch or
    supervise a run (``RUN_LAUNCHERS``, each with its reason): planning, checks and the core read
    torch-free modules, never the training process's package;
(b) no import cycle, except among the TUI's screens and their app (``CYCLE_ALLOWED``): a screen
    names its app for typing and the app opens its screens lazily, which is how Textual apps are
    built; anything else in a cycle is a layering mistake;
(c) no function longer than ``MAX_LINES`` lines, except data tables (see ``is_data_table``);
(d) data flows one way (DESIGN.md): nothing outside fmllm_tui/tui/ imports the TUI but its
    launcher (cli_tui), and no module imports a CLI (the faces share the core, not each other).

Imports count wherever they stand: at module level, inside functions (the lazy imports that keep
start-up fast are still dependencies), and relative ones resolved against their package.
Imports under ``if TYPE_CHECKING:`` are kept as their own kind: they never run, so they make no
cycle, but they are still dependencies for rule (a). Not seen: a module loaded by a computed
name (the help screen's ``__import__`` of the lazy screens) or run as a process (``-m``).

``python tests/test_structure.py`` (or ``pytest tests/test_structure.py -s``) prints the graph in
layers: layer 0 imports nothing of fmllm's, each module sits one layer above the highest module it
imports, and a cycle's members share one layer. This text drawing stands in for the drawing
issue 18 made with farm-studio (not a dependency of this project): the same facts, checked on
every run of the suite instead of read off a picture once.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = "fmllm_tui.runner"
MAX_LINES = 80

#: Where each package's files live in the repository (pyproject's package-dir).
PACKAGE_DIRS = {"fmllm_tui": ROOT / "fmllm_tui", "fmllm_tui.checks": ROOT / "checks",
                "fmllm_tui.fixes": ROOT / "fixes"}

#: Modules outside the runner that may import it, and why. Everything else must reach a run's
#: facts through torch-free modules (multigpu, datafile, plan, logdiag, ...).
RUN_LAUNCHERS = {
    "fmllm_tui.cli_run": "fmllm-run: launches, follows and stops training runs (its whole job)",
    "fmllm_tui.tui.runlink": "the TUI's one bridge to runs: launch, follow, stop, find the latest run folder",
    "fmllm_tui.tui.screens.run": "the Run screen's keys start, stop, kill and resume runs (runner.start/stop/kill/resume)",
    "fmllm_tui.checkrun": "ends the runs a check run started and left alive (runner.launch.kill records them as killed)",
    "fmllm_tui.checks.test_run": "the run checks start the real minimal training step (runner.run_minimal_test)",
    "fmllm_tui.checks.test_logs": "the log checks read the latest run's train.log (runner.latest_run knows the run folders)",
    "fmllm_tui.checks.test_distributed": "gpu.count runs the runner's own NCCL probe (a child with torch), not planning",
}

#: Modules among which a cycle is allowed: the screens and the app that opens them.
CYCLE_ALLOWED_PREFIXES = ("fmllm_tui.tui.screens.", "fmllm_tui.tui.app")

#: (file, function) pairs that are over MAX_LINES today and are being split by other work. The
#: test below fails when one of them is short again, so that it is taken off this list.


# ---- reading the source ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    """One import of one fmllm module by another."""

    source: str
    target: str
    line: int
    kind: str  # "module" (top level), "function" (inside a def), "typing" (under TYPE_CHECKING)


@dataclass
class Graph:
    """Modules (name -> file) and the imports between them."""

    files: dict[str, Path]
    edges: list[Edge] = field(default_factory=list)

    def targets(self, module: str, kinds: Iterable[str] = ("module", "function")) -> set[str]:
        """The fmllm modules ``module`` imports by an import of one of ``kinds``."""
        wanted = set(kinds)
        return {e.target for e in self.edges if e.source == module and e.kind in wanted}


def module_files() -> dict[str, Path]:
    """Every module of the three packages, by its installed dotted name."""
    files: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            # checks/ and fixes/ sit outside fmllm_tui/ in the repo; fmllm_tui/ has no copies of them
            if name.startswith(("fmllm_tui.checks", "fmllm_tui.fixes")) and folder == PACKAGE_DIRS["fmllm_tui"]:
                continue
            files[name] = path
    return files


def _package_of(module: str, path: Path) -> str:
    """The package a relative import in ``module`` is resolved against."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement with its kind, walking into functions and TYPE_CHECKING blocks."""

    def walk(node: ast.AST, kind: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, kind
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), "typing")
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), kind)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, "typing" if kind == "typing" else "function")
            else:
                yield from walk(child, kind)

    yield from walk(tree, "module")


def _resolve(stmt: ast.Import | ast.ImportFrom, package: str, known: set[str]) -> list[str]:
    """The fmllm modules one import statement loads (a ``from X import y`` names X.y when y is a
    module, else X itself)."""
    if isinstance(stmt, ast.Import):
        bases = [a.name for a in stmt.names]
        return [_nearest(b, known) for b in bases if _nearest(b, known)]
    if stmt.level:
        anchor = package.split(".")
        anchor = anchor[: len(anchor) - (stmt.level - 1)]
        base = ".".join([*anchor, *([stmt.module] if stmt.module else [])])
    else:
        base = stmt.module or ""
    found = []
    for alias in stmt.names:
        sub = f"{base}.{alias.name}"
        target = sub if sub in known else _nearest(base, known)
        if target:
            found.append(target)
    return found


def _nearest(name: str, known: set[str]) -> str:
    """``name`` or its closest enclosing fmllm module ('' when it is not fmllm's)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@cache
def build_graph() -> Graph:
    """The import graph of fmllm_tui, checks/ and fixes/, read from their source."""
    files = module_files()
    graph = Graph(files)
    known = set(files)
    for module, path in files.items():
        tree = _tree(path)
        package = _package_of(module, path)
        for stmt, kind in _imports(tree):
            for target in _resolve(stmt, package, known):
                if target != module:
                    graph.edges.append(Edge(module, target, stmt.lineno, kind))
    return graph


# ---- cycles and layers --------------------------------------------------------------------------


def strongly_connected(nodes: Iterable[str], succ: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative: no recursion limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(succ.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(succ.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                out.append(sorted(comp))
    return out


def runtime_successors(graph: Graph) -> dict[str, set[str]]:
    """What each module imports when it runs (TYPE_CHECKING imports left out)."""
    return {m: graph.targets(m) for m in graph.files}


def cycles(graph: Graph) -> list[list[str]]:
    """The groups of modules that import each other, directly or around a circle."""
    succ = runtime_successors(graph)
    return [c for c in strongly_connected(graph.files, succ) if len(c) > 1]


def layers(graph: Graph) -> list[list[list[str]]]:
    """Layer n holds the components (a module, or a cycle's modules) whose highest import sits in
    layer n-1; layer 0 imports nothing of fmllm's."""
    succ = runtime_successors(graph)
    comps = strongly_connected(graph.files, succ)
    comp_of = {m: i for i, comp in enumerate(comps) for m in comp}
    level: dict[int, int] = {}
    for i, comp in enumerate(comps):  # Tarjan emits a component after every one it reaches
        below = {comp_of[t] for m in comp for t in succ[m]} - {i}
        level[i] = 1 + max((level[j] for j in below), default=-1)
    out: list[list[list[str]]] = [[] for _ in range(1 + max(level.values(), default=0))]
    for i, comp in enumerate(comps):
        out[level[i]].append(comp)
    for row in out:
        row.sort()
    return out


def _short(module: str) -> str:
    return module.removeprefix("fmllm_tui.") or module


def drawing(graph: Graph) -> str:
    """The layers as text, top layer first: each module with the fmllm modules it imports."""
    succ = runtime_successors(graph)
    lines = [f"fmllm import graph: {len(graph.files)} modules, {len(graph.edges)} imports "
             "(fmllm_tui., checks -> fmllm_tui.checks, fixes -> fmllm_tui.fixes; * = a cycle)"]
    all_layers = layers(graph)
    for n in range(len(all_layers) - 1, -1, -1):
        lines.append(f"── layer {n} " + "─" * 60)
        for comp in all_layers[n]:
            mark = "*" if len(comp) > 1 else " "
            for m in comp:
                deps = ", ".join(sorted(_short(t) for t in succ[m])) or "-"
                runner = "  [imports the runner]" if _imports_runner(graph, m) else ""
                lines.append(f" {mark} {_short(m):<34} -> {deps}{runner}")
    return "\n".join(lines)


def _imports_runner(graph: Graph, module: str) -> bool:
    return any(_in_runner(t) for t in graph.targets(module, ("module", "function", "typing")))


def _in_runner(module: str) -> bool:
    return module == RUNNER or module.startswith(RUNNER + ".")


# ---- function lengths ---------------------------------------------------------------------------


def _is_constant_name(node: ast.AST) -> bool:
    """A name written in capitals or as a class (``GiB``, ``Preset``, ``ExitCode.USAGE``): a
    constant or a type, never a variable the function computes."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id[:1].isupper()


def _is_literal(node: ast.AST) -> bool:
    """A value written out: constants, constant names, containers of them, signs, arithmetic on
    them (``4 * GiB``), f-strings, and record constructors (``Preset(name="x", r=8)``: a capitalised callee) of literals."""
    if isinstance(node, (ast.Constant, ast.JoinedStr)):
        return True
    if isinstance(node, (ast.Name, ast.Attribute)):
        return _is_constant_name(node)
    if isinstance(node, ast.UnaryOp):
        return _is_literal(node.operand)
    if isinstance(node, ast.BinOp):  # 4 * GiB
        return _is_literal(node.left) and _is_literal(node.right)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is None or _is_literal(k) for k in node.keys) and all(_is_literal(v) for v in node.values)
    if isinstance(node, ast.Call):
        return _is_constant_name(node.func) and all(_is_literal(a) for a in node.args) and all(
            _is_literal(k.value) for k in node.keywords)
    return False


def _literal_lines(node: ast.AST) -> set[int]:
    """Lines covered by literal containers, record constructors and multi-line strings inside
    ``node`` (a one-line constant inside logic does not make a line a table's)."""
    covered: set[int] = set()
    for child in ast.walk(node):
        if not isinstance(child, (ast.List, ast.Tuple, ast.Set, ast.Dict, ast.Call, ast.Constant)):
            continue
        end = child.end_lineno or child.lineno
        if (end > child.lineno or not isinstance(child, ast.Constant)) and _is_literal(child):
            covered.update(range(child.lineno, end + 1))
    return covered


def is_data_table(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """The rule for (c): a function is a data table when at least two thirds of the lines of its
    body (the docstring left out) lie inside literals — lists, dicts, tuples or record
    constructors whose every element is a constant, a name or another such literal. A catalogue
    of presets or a table of messages is read row by row, not as logic, so its length is not a
    screen of logic to hold in one's head."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if not body:
        return False
    first, last = body[0].lineno, max(s.end_lineno or s.lineno for s in body)
    covered = set().union(*(_literal_lines(s) for s in body)) & set(range(first, last + 1))
    return len(covered) * 3 >= (last - first + 1) * 2


@dataclass(frozen=True)
class Function:
    """One def, by file (relative to the repo) and qualified name (Class.method, outer.inner)."""

    file: str
    name: str
    line: int
    length: int
    data_table: bool


@cache
def functions() -> tuple[Function, ...]:
    """Every function and method of the three packages with its length in lines (decorators
    left out, the docstring and nested functions counted)."""
    out: list[Function] = []
    for path in build_graph().files.values():
        tree = _tree(path)
        rel = path.relative_to(ROOT).as_posix()

        def visit(node: ast.AST, prefix: str, rel: str = rel) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = prefix + child.name
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    out.append(Function(rel, name, child.lineno, length, is_data_table(child)))
                    visit(child, name + ".")
                elif isinstance(child, ast.ClassDef):
                    visit(child, prefix + child.name + ".")
                else:
                    visit(child, prefix)

        visit(tree, "")
    return tuple(out)


def long_functions() -> list[Function]:
    """Functions over MAX_LINES that are not data tables."""
    return [f for f in functions() if f.length > MAX_LINES and not f.data_table]


# ---- the tests ----------------------------------------------------------------------------------


def test_the_graph_sees_the_packages_and_their_imports() -> None:
    """The reader finds what it must (else the rules below would pass on an empty graph)."""
    g = build_graph()
    assert {"fmllm_tui.cli_check", "fmllm_tui.runner.train", "fmllm_tui.checks._plugin",
            "fmllm_tui.fixes.engine", "fmllm_tui.tui.screens.memory"} <= set(g.files)
    # a relative import, a function-level import, a TYPE_CHECKING import, a package's submodule
    assert "fmllm_tui.fixes.errors" in g.targets("fmllm_tui.fixes.engine")
    assert "fmllm_tui.tui.configops" in g.targets("fmllm_tui.tui.screens.planning", ("function",))
    assert "fmllm_tui.tui.app" in g.targets("fmllm_tui.tui.screens.base", ("typing",))
    assert "fmllm_tui.runner.rundir" in g.targets("fmllm_tui.cli_run")


def test_only_the_launchers_import_the_runner() -> None:
    g = build_graph()
    offenders = [f"{e.source} imports {e.target} at {g.files[e.source].relative_to(ROOT)}:{e.line}"
                 for e in g.edges
                 if _in_runner(e.target) and not _in_runner(e.source) and e.source not in RUN_LAUNCHERS]
    assert not offenders, ("these modules import the runner; read torch-free modules instead "
                           "(multigpu, datafile, plan) or add the module to RUN_LAUNCHERS with why:\n"
                           + "\n".join(sorted(offenders)))


def test_every_launcher_still_imports_the_runner() -> None:
    """An exemption that is not used any more comes off the list."""
    g = build_graph()
    unused = sorted(m for m in RUN_LAUNCHERS if m not in g.files or not _imports_runner(g, m))
    assert not unused, f"take these off RUN_LAUNCHERS, they no longer import the runner: {unused}"


def test_the_faces_share_the_core_not_each_other() -> None:
    g = build_graph()
    bad = [f"{e.source} imports {e.target} at {g.files[e.source].relative_to(ROOT)}:{e.line}" for e in g.edges
           if (e.target.startswith("fmllm_tui.tui") and not e.source.startswith("fmllm_tui.tui")
               and e.source != "fmllm_tui.cli_tui")
           or e.target.startswith("fmllm_tui.cli_")]
    assert not bad, ("the TUI is imported only by fmllm-tui's entry point, and no module imports a CLI; "
                     "move what they share into the core:\n" + "\n".join(sorted(bad)))


def _cycle_allowed(cycle: list[str]) -> bool:
    return all(m.startswith(CYCLE_ALLOWED_PREFIXES) for m in cycle)


def test_no_import_cycle_outside_the_screens() -> None:
    bad = [c for c in cycles(build_graph()) if not _cycle_allowed(c)]
    assert not bad, "import cycles (each line a group of modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in bad)


def test_no_function_longer_than_a_screen_or_so() -> None:
    over = long_functions()
    assert not over, (f"functions over {MAX_LINES} lines (split them at their seams):\n"
                      + "\n".join(f"{f.file}:{f.line} {f.name} ({f.length} lines)" for f in over))


def test_data_table_rule() -> None:
    """The rule tells a table from logic of the same length."""
    table = "def t():\n    '''doc'''\n    return [\n" + "".join(
        f"        Row(name='p{i}', r={i}, alpha=-{i}, ok=True, size=4 * GiB, where=X.y),\n" for i in range(90)) + "    ]\n"
    logic = "def f(x):\n" + "".join(f"    x = g(x, {i}) + h(x)\n" for i in range(90)) + "    return x\n"
    mixed = "def m(x):\n    T = [1, 2, 3]\n" + "".join(f"    x = x + T[{i % 3}]\n" for i in range(90)) + "    return x\n"
    fn = [ast.parse(src).body[0] for src in (table, logic, mixed)]
    assert [is_data_table(f) for f in fn] == [True, False, False]  # type: ignore[arg-type]


def test_cycles_and_layers_on_a_small_graph() -> None:
    """Tarjan's components and the layering, on a graph small enough to check by hand."""
    succ = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert sorted(c for c in strongly_connected(succ, succ) if len(c) > 1) == [["a", "b", "c"]]
    g = Graph({m: Path(m) for m in succ})
    g.edges = [Edge(s, t, 1, "module") for s, ts in succ.items() for t in ts]
    g.edges.append(Edge("d", "a", 1, "typing"))  # never runs: no cycle through d
    assert layers(g) == [[["d"]], [["a", "b", "c"], ["e"]]]


def test_print_the_layers() -> None:
    """The drawing (seen with ``pytest -s``): every module once, layer 0 at the bottom."""
    g = build_graph()
    text = drawing(g)
    print("\n" + text)
    for module in g.files:
        assert sum(1 for ln in text.splitlines() if ln[3:].split(" ", 1)[0] == _short(module)) == 1, module


if __name__ == "__main__":
    graph = build_graph()
    print(drawing(graph))
    print()
    for c in cycles(graph):
        print(("allowed " if _cycle_allowed(c) else "CYCLE   ") + " <-> ".join(_short(m) for m in c))
    for f in long_functions():
        print(f"long: {f.file}:{f.line} {f.name} ({f.length} lines)")
    sys.exit(0)
