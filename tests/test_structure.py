"""The shape of the code base: no import cycles, a short runner that never branches on a method's name, scripts
that drive the methods instead of restating them, a new method as one class, and documentation for a newcomer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from evaluation_llama import methods

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "evaluation_llama", "data", "scripts")


# ---- import cycles -------------------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the repository that `name` imports, at module level and inside functions alike."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found = next((".".join(parts[:n]) for n in range(len(parts), 0, -1)
                              if ".".join(parts[:n]) in known), None)
                if found:
                    out.add(found)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if package else []
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    out.add(f"{target}.{alias.name}")
                elif target in known:
                    out.add(target)
    out.discard(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component with more than one module."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_shortest_cycle(graph, comp, min(comp)) for comp in comps]


def _shortest_cycle(graph: dict[str, set[str]], comp: set[str], start: str) -> list[str]:
    """The shortest path start -> ... -> start inside one component (breadth first)."""
    queue, seen = [[start]], {start}
    while queue:
        path = queue.pop(0)
        for w in sorted(graph[path[-1]] & comp):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                queue.append(path + [w])
    raise AssertionError("not a cycle")


def test_import_cycle_finder_reports_the_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    mods = _modules()
    graph = {name: _imports(name, path, set(mods)) for name, path in mods.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles (module- or function-level imports): " + \
        "; ".join(" -> ".join(c) for c in cycles)


# ---- the runner ----------------------------------------------------------------------------------------------------
RUN_MODULES = ("runner", "shards", "settings", "answers", "paths", "flags", "guards", "prompting", "model_cache")


def test_runner_is_short():
    lines = (ROOT / "evaluation_llama" / "runner.py").read_text().count("\n")
    assert lines <= 400, f"evaluation_llama/runner.py has {lines} lines"


@pytest.mark.parametrize("module", RUN_MODULES)
def test_no_method_name_branches(module):
    """Only evaluation_llama/methods.py (and a runner entry module naming its method) spells a method's name."""
    names = set(methods.REGISTRY) | set(methods.ALIASES)
    tree = ast.parse((ROOT / "evaluation_llama" / f"{module}.py").read_text())
    found = sorted({n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names})
    assert not found, f"evaluation_llama/{module}.py names method(s) {found}"


@pytest.mark.parametrize("script", ["bench_peers.py", "run_suite.py", "multi_gpu.py"])
def test_scripts_drive_methods_instead_of_restating_them(script):
    """The SWIFT session (search, calibrator, layer cache) and the tokenization live in evaluation_llama."""
    tree = ast.parse((ROOT / "scripts" / script).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    restated = imported & {"model.swift.decoding", "model.swift.layer_search", "model.swift.layer_cache",
                           "evaluation_llama.runner.private"}
    assert not restated and not names & {"format_prompt", "LayerSearch", "DraftCalibrator", "swift_generate",
                                         "vanilla_generate", "SEED_STRIDE"}, (restated, names)
    private = [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               for a in n.names if a.name.startswith("_")]
    assert not private, f"scripts/{script} imports private names {private}"


# ---- a new method is one class -------------------------------------------------------------------------------------
class Echo(methods.Vanilla):
    """Vanilla decoding under another name with one flag of its own: all a new method needs."""

    name = "echo-test"
    entry_module = "tests.echo"
    description = "plain decoding, for a test"
    record_keys = ("echo",)

    @classmethod
    def add_flags(cls, parser):
        parser.add_argument_group("echo").add_argument("--echo-level", type=int, default=1, help="a test flag")

    @classmethod
    def build_config(cls, args):
        return {"level": args.echo_level}

    @classmethod
    def record_config(cls, config):
        return {"echo": config}

    @classmethod
    def config_to_dict(cls, config):
        return config

    @classmethod
    def config_from_dict(cls, data):
        return data

    def answer_stats(self, result):
        return {"method": self.name, "level": self.config["level"]}

    def end_task(self):
        return [f"echo level {self.config['level']}"]


@pytest.fixture
def echo():
    methods.register(Echo)
    yield Echo
    del methods.REGISTRY[Echo.name]


@pytest.mark.real_model
def test_a_new_method_is_one_class(echo, smollm2_path, shared_data_dir, tmp_path, capsys):
    from evaluation_llama import runner
    from evaluation_llama.answers import read_answer_file

    answer = tmp_path / "echo.jsonl"
    argv = ["--model-path", str(smollm2_path), "--data-dir", str(shared_data_dir), "--task", "gsm8k",
            "--num-samples", "1", "--max-new-tokens", "4", "--warmup", "0", "--device", "cpu",
            "--answer-file", str(answer), "--echo-level", "3"]
    assert runner.main(echo.name, argv) == 0
    header, records = read_answer_file(answer)
    assert header["config"]["method"] == echo.name and header["config"]["echo"] == {"level": 3}
    assert header["config"]["swift"] is None  # every method's keys, None where not its own
    assert records[0]["stats"] == {"method": echo.name, "level": 3}
    assert "echo level 3" in capsys.readouterr().out


# ---- documentation -------------------------------------------------------------------------------------------------
DOCS = [ROOT / "README.md", ROOT / "docs" / "RESULTS.md", ROOT / "docs" / "DESIGN.md"]
FOREIGN = re.compile(r"\bissues?\b|\bsessions?\b|device[ -]calls?|device[ -]hours?|device[ -]minutes?", re.I)


def test_readme_is_short_and_docs_speak_of_the_project():
    assert (ROOT / "README.md").read_text().count("\n") <= 150
    for doc in DOCS:
        hits = [m.group(0) for m in FOREIGN.finditer(doc.read_text())]
        assert not hits, f"{doc.name} speaks of {sorted(set(hits))}"


def test_docs_point_at_files_that_exist():
    """Every repository path the documentation names in backticks or links exists (the reference results moved)."""
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for ref in re.findall(r"[`(]((?:outputs/reference|assets/reference|docs|scripts|evaluation_llama|model|"
                              r"data|tests)/[^`)\s*<>]+)[`)]", text):
            if not (ROOT / ref).exists() and not (doc.parent / ref).exists():
                missing.append(f"{doc.name}: {ref}")
    assert not missing, missing
