"""The engine's layering, read from the source with ast (every import counts, those inside functions too):
no family imports another family, only the registry names a family, the shared parts import no family,
core/ never imports the UI, and core/ has no import cycle. And no file in core/ is over 400 lines: a
newcomer finds the room for a change from the module names, not inside a long file."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"
# Shared by every family: they must not know any family (the registry is the one place that lists them).
SHARED = ("core.pipeline_base", "core.component_loading", "core.blocks")
MAX_CORE_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in CORE.rglob("*.py")}


def imported_names(path: Path) -> set[str]:
    """Every module `path` imports, as dotted names ('core.blocks.rope', 'textual.app'); `from x import y`
    counts as both x and x.y, so that importing a submodule by name is seen."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names |= {f"{target}.{alias.name}" for alias in node.names}
    return {name.removeprefix("quantbench.") for name in names}


def registered() -> tuple[str, ...]:
    """The registry's REGISTERED names, read from its source (it imports each family by name at run time)."""
    tree = ast.parse((CORE / "families" / "__init__.py").read_text())
    value = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "REGISTERED" for t in node.targets))
    return tuple(ast.literal_eval(value))


@lru_cache(maxsize=1)
def graph() -> dict[str, set[str]]:
    """core module -> the core modules it imports (the registry imports every registered family)."""
    known = modules()
    edges = {name: {n for n in imported_names(path) if n in known and n != name} for name, path in known.items()}
    edges["core.families"] |= {f"core.families.{name}" for name in registered()}
    return edges


def family_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "families" else None


def test_no_family_imports_another_family():
    crossings = sorted(f"{module} imports {target}" for module, targets in graph().items() for target in targets
                       if family_of(module) and family_of(target) and family_of(target) != family_of(module))
    assert crossings == []


def test_the_shared_parts_import_no_family():
    offenders = sorted(f"{module} imports {target}" for module, targets in graph().items() for target in targets
                       if module.startswith(SHARED) and family_of(target))
    assert offenders == []


def test_only_the_registry_names_a_family():
    """Outside its own folder nothing in core/ imports a family: the rest reads the registry's descriptors."""
    offenders = sorted(f"{module} imports {target}" for module, targets in graph().items() for target in targets
                       if family_of(target) and not family_of(module) and module != "core.families")
    assert offenders == []


def test_core_never_imports_the_ui():
    offenders = sorted(f"{name} imports {target}" for name, path in modules().items()
                       for target in imported_names(path)
                       if target.split(".")[0] == "textual" or target.startswith(("tui", "cli")))
    assert offenders == []


def test_core_has_no_import_cycle():
    """Tarjan's strongly connected components: every one of more than one module is a cycle."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert cycles == []


def test_no_core_file_is_over_400_lines():
    lengths = {path.relative_to(CORE.parent): len(path.read_text().splitlines()) for path in modules().values()}
    assert len(lengths) > 100  # the whole engine was read
    assert sorted(f"{path}: {n} lines" for path, n in lengths.items() if n > MAX_CORE_LINES) == []


def test_the_checks_see_imports():
    """The reader finds relative, absolute and function-level imports (else the tests above prove nothing)."""
    edges = graph()
    assert "core.blocks.rope" in edges["core.blocks.attention"]  # from .rope import apply_rope
    assert "core.families.flux2.transformer" in edges["core.families.flux2.components"]
    assert "core.pipelines" in edges["core.lab.structure"]  # imported inside a function
    assert family_of("core.families.qwen_image.vae") == "qwen_image"
    assert "core.families.flux2" in edges["core.families"]


def test_the_cli_starts_without_the_workbench():
    """`quantbench generate` and the other commands start without importing tui/ or Textual (a second or more of
    imports, for nothing): the workbench's modules are imported only when it opens. The line SIGTERM ends with is
    the CLI's and the workbench's both, so it lives in core/ where both import it."""
    import subprocess
    import sys
    code = ("import sys; import quantbench.cli.main as m; "
            "print(sorted({n.split('.')[0] if n.startswith('textual') else n for n in sys.modules "
            "if n.startswith(('textual', 'quantbench.tui'))})); print(m.TERMINATED_LINE)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    imported, line = done.stdout.strip().splitlines()[-2:]
    assert done.returncode == 0 and imported == "[]", done.stdout + done.stderr
    from quantbench.core.errors import TERMINATED_LINE
    from quantbench.tui import hangup
    assert line == TERMINATED_LINE == hangup.TERMINATED_LINE
