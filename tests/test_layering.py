"""Imports run one way: from the command line down to the math (docs/ARCHITECTURE.md draws the map).

Every module's imports are read with ``ast`` (nothing is imported) and checked against LAYERS: a
module may import from its own layer or any layer below it, never from one above; no two modules
import each other, directly or around a loop; and inside the library an import sits at the top of
its module, except for an optional heavy dependency that only one function needs.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Top to bottom. A module belongs to the layer of its longest matching name prefix.
LAYERS = [
    ("entry", ["train", "sample", "bench", "minigpt.__main__"]),  # scripts and `python -m minigpt`: each hands argv to minigpt.cli
    ("cli", ["minigpt.cli"]),  # argv parsing, printing, exit codes
    ("api", ["minigpt"]),  # the package's front door, minigpt/__init__.py
    ("train", ["minigpt.train"]),  # the loop, the two tasks, their configs and plots
    ("loading", ["minigpt.loading"]),  # a path -> model / classifier / tokenizer
    ("infer", ["minigpt.infer"]),  # generation, perplexity, class prediction
    ("interop", ["minigpt.interop"]),  # Hugging Face folders in and out
    ("model", ["minigpt.model"]),  # config, layers, backbone and heads, LoRA
    ("data", ["minigpt.data"]),  # tokenizers, corpus preparation, token files, labelled text
    ("base", ["minigpt.config_schema", "minigpt.checkpoint", "minigpt.files", "minigpt.device", "minigpt.perf", "minigpt.metrics",
              "minigpt.locks", "minigpt.errors"]),
]
FUNCTION_LEVEL_OK = {"matplotlib", "transformers", "pyarrow", "tokenizers", "onnxscript"}  # optional extras, imported where they are used


def layer_of(module: str) -> int:
    """Index into LAYERS (0 = top) of the longest prefix that names ``module`` or a package above it."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS (and docs/ARCHITECTURE.md)")
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources() -> dict[str, str]:
    """module name -> source, for the package, the top-level scripts and the benches."""
    paths = [*sorted((REPO / "minigpt").rglob("*.py")), REPO / "train.py", REPO / "sample.py",
             *sorted((REPO / "bench").glob("*.py"))]
    return {module_name(p): p.read_text(encoding="utf-8") for p in paths}


def imports(module: str, source: str, is_package: bool) -> list[tuple[str, int, bool]]:
    """(imported minigpt module, line, at module level?) for each import of minigpt code in ``source``."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    top_level |= {id(n) for node in tree.body if isinstance(node, (ast.Try, ast.If)) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb level - 1 packages from this module's package
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            # `from pkg import name` may name a submodule: count it as importing pkg.name too
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "minigpt" or name.startswith("minigpt."):
                found.append((name, node.lineno, id(node) in top_level))
            elif not name.startswith("minigpt") and id(node) not in top_level:
                found.append((name, node.lineno, False))
    return found


def violations(modules: dict[str, str]) -> list[str]:
    """Every upward import, import loop and function-level import of minigpt code in ``modules``."""
    known = set(modules)
    problems, graph = [], {m: set() for m in modules}
    for module, source in modules.items():
        is_package = (REPO / Path(*module.split("."))).is_dir()
        for name, line, at_top in imports(module, source, is_package):
            target = name if name in known else None
            if not name.startswith("minigpt"):  # a third-party import inside a function
                if module.startswith("minigpt") and name.split(".")[0] not in FUNCTION_LEVEL_OK:
                    problems.append(f"{module}:{line}: imports {name} inside a function")
                continue
            if target is None:
                continue  # a name from a module (`from .x import f`), or not minigpt's
            if not at_top and module.startswith("minigpt"):
                problems.append(f"{module}:{line}: imports {name} inside a function (a hidden circle?)")
            if layer_of(target) < layer_of(module):
                problems.append(f"{module}:{line}: imports {target} from a layer above "
                                f"({LAYERS[layer_of(module)][0]} -> {LAYERS[layer_of(target)][0]})")
            if target != module:
                graph[module].add(target)
    problems += [f"import loop: {' -> '.join(loop)}" for loop in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One loop per strongly connected group of modules that import each other (Tarjan's algorithm)."""
    index, low, stack, on_stack, loops, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                loops.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return loops


def test_imports_run_one_way():
    assert violations(sources()) == []


def test_every_module_has_a_layer():
    for module in sources():
        layer_of(module)


@pytest.mark.parametrize("module,line,problem", [
    ("minigpt.model.layers", "from ..train.loop import fit", "from a layer above (model -> train)"),
    ("minigpt.data.corpus", "from minigpt.loading import load_model", "from a layer above (data -> loading)"),
    ("minigpt.infer.generate", "def f():\n    from ..model import model", "inside a function"),
    ("minigpt.device", "def f():\n    import tiktoken", "imports tiktoken inside a function"),
])
def test_the_check_catches_an_upward_import(module, line, problem):
    modules = sources()
    modules[module] += "\n" + line + "\n"
    assert any(problem in p and p.startswith(module) for p in violations(modules)), violations(modules)


def test_the_check_catches_an_import_loop():
    modules = sources()
    modules["minigpt.model.config"] += "\nfrom .model import GPT\n"  # model.model imports model.config
    assert any(p.startswith("import loop:") and "minigpt.model.config" in p for p in violations(modules))
