"""The package's architecture as a rule: layers as folders, imports only downwards, no loops.

A newcomer reads the layers off the tree (README "How it works" draws it); these tests keep
the tree, the README and the import graph telling the same story.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from testing.hermetic import REPO_ROOT

PACKAGE = REPO_ROOT / "gitar"
# Lowest first. A module may import its own layer and the layers below it, never above; two
# layers of one rank (sharing and review) do not import each other.
LAYERS: list[tuple[int, str]] = [
    (0, "foundation"),  # the top-level modules: errors, text, numbers, paths, shared, files, version
    (1, "config"),
    (2, "runtime"),
    (2, "store"),
    (3, "host"),
    (4, "review"),  # the attempts of a branch and their noise: what the loop judges by, and people read
    (5, "loop"),
    (6, "sharing"),
    (6, "demo"),
    (7, "commands"),
    (8, "cli"),
]
RANK = {name: rank for rank, name in LAYERS}


def layer_of(module: str) -> str:
    """gitar.store.git -> store; gitar.errors -> foundation."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return "foundation"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO_ROOT).with_suffix("")
        name = ".".join(rel.parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(module: str, path: Path) -> set[str]:
    """Every gitar module this one imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(), str(path))
    known = modules()
    out: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("gitar"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("gitar"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in known else base)
    return {m for m in out if m != "gitar" and m != module}


def test_every_module_lives_in_a_known_layer() -> None:
    unknown = {m for m in modules() if m != "gitar" and layer_of(m) not in RANK}
    assert not unknown, f"modules outside the layers of tests/core/test_layers.py: {sorted(unknown)}"


def test_nothing_imports_upward() -> None:
    upward = []
    for module, path in modules().items():
        if module == "gitar" or module == "gitar.__main__":
            continue
        mine = layer_of(module)
        for imported in imports_of(module, path):
            theirs = layer_of(imported)
            if RANK[theirs] > RANK[mine] or (RANK[theirs] == RANK[mine] and theirs != mine):
                upward.append(f"{module} ({mine}) imports {imported} ({theirs})")
    assert not upward, "\n".join(upward)


def test_no_import_loops() -> None:
    graph = {m: imports_of(m, p) for m, p in modules().items()}
    # packages import nothing of their own; a module importing `gitar.store` means a submodule
    graph = {m: {i for i in deps if i in graph} for m, deps in graph.items()}
    loops = []
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            loops.append(" -> ".join([*trail[trail.index(node):], node]))
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*trail, node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
    assert not loops, "\n".join(loops)


def test_readme_layout_matches_the_tree() -> None:
    """README's layout block names every module and folder of the package, and nothing else."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```\ngitar/ .*?```", readme, re.S)
    assert block, "README.md: the layout block (```gitar/ ...```) is missing"
    named: set[str] = set()
    folder = ""
    entry = re.compile(r"(\w+\.py|\w+/)(, \w+\.py)*$")
    for line in block.group(0).splitlines()[1:-1]:
        indent = len(line) - len(line.lstrip(" "))
        token = line.strip().split("  ")[0]
        if indent not in (2, 4):
            continue  # gitar/ itself, files beside it, a continued description
        # A folder or module line that does not parse would drop out of the check unseen.
        assert entry.match(token), f"README.md layout: cannot read {line.strip()!r} (`name.py  what it holds`)"
        for name in token.split(", "):
            if indent == 2:
                folder = name if name.endswith("/") else ""
                named.add(name)
            else:
                named.add(folder + name)
    actual = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if path.name in ("__init__.py", "__main__.py") or "__pycache__" in rel.parts:
            if len(rel.parts) == 2:
                actual.add(rel.parts[0] + "/")
            continue
        actual.add(rel.as_posix())
        if len(rel.parts) == 2:
            actual.add(rel.parts[0] + "/")
    assert actual - named == set(), "in the tree but not in README's layout"
    assert named - actual == set(), "in README's layout but not in the tree"


def test_the_research_files_import_only_the_runtime() -> None:
    # train.py and prepare.py are copied into every workspace and pinned there: what of gitar they
    # use is one folder (gitar/runtime/, contract.py naming the few lower-layer names), so the
    # rest of the package can change without breaking a committed trainer or harness.
    for name in ("train.py", "prepare.py"):
        used = imports_of(name.removesuffix(".py"), REPO_ROOT / name)
        assert used, f"{name} imports nothing of gitar: the check reads the wrong file"
        outside = sorted(m for m in used if layer_of(m) != "runtime")
        assert not outside, f"{name} imports {outside}; import them through gitar.runtime (contract.py)"


def _pygit2_uses(path: Path) -> list[str]:
    """Where a module imports pygit2 (at the top or in a function) or reaches past a Git into its `.repo`."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            uses += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] == "pygit2"]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "pygit2":
            uses.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr == "repo":
            uses.append(f"line {node.lineno}: .repo")
    return uses


def test_only_the_store_s_git_module_uses_pygit2() -> None:
    # One engine behind one class (gitar/store/git.py): callers get gitar's own small types and
    # errors, so what libgit2 does (and how it fails) is decided in one place.
    own = "gitar.store.git"
    assert _pygit2_uses(modules()[own]), f"{own} uses no pygit2: the check reads the wrong thing"
    found = [f"{module} {use}" for module, path in modules().items() if module != own
             for use in _pygit2_uses(path)]
    assert not found, "pygit2 outside gitar/store/git.py (give Git a method instead):\n" + "\n".join(found)


def test_every_notebook_writer_refreshes_the_summary() -> None:
    # The store cannot import the view derived from it, so the follower of a record write is an
    # argument: made in one place (review/summary.writer), a writer never skips the refresh.
    own = "gitar.review.summary"
    made = [module for module, path in modules().items()
            for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) == "NotebookWriter"]
    assert own in made, f"{own} makes no NotebookWriter: the check reads the wrong thing"
    assert set(made) == {own}, f"NotebookWriter made outside {own} (use summary.writer): {sorted(set(made) - {own})}"
