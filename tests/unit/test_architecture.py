"""Dependencies run one way (ARCHITECTURE.md): no module imports a higher layer or another package's private module.

Every import statement counts: top-level, inside functions and under ``if TYPE_CHECKING``, ``import x`` and
``from x import y`` (absolute or relative). A first-party module missing from ``LAYERS`` fails too, so a new
package has to be placed in the table (and in ARCHITECTURE.md) before it can be imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ceindex", "indexer", "search_pipeline", "mappings")

# bottom to top; a module may import its own layer and the ones below. "=name" matches that module only,
# any other entry also matches its submodules.
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("ceindex.errors", "ceindex.redact", "ceindex.text", "ceindex.filters", "ceindex.data"),
    1: ("ceindex.models",),
    2: ("ceindex.config",),
    3: ("ceindex.backends", "mappings"),
    4: ("indexer", "search_pipeline"),
    5: ("ceindex.evaluation", "ceindex.distill", "ceindex.layers"),
    6: ("ceindex.commands", "ceindex.cli", "ceindex.demo", "ceindex.testing", "=ceindex", "bench"),
}
FIRST_PARTY = ("ceindex", "indexer", "search_pipeline", "mappings", "bench")
# importer -> packages it must not import although the layers allow it: siblings stay independent of each
# other, and distillation trains from the corpus with the model core and ceindex.text, never through an index
INDEPENDENT: dict[str, tuple[str, ...]] = {
    "indexer": ("search_pipeline",),
    "search_pipeline": ("indexer",),
    "ceindex.distill": ("indexer", "search_pipeline", "ceindex.evaluation", "ceindex.backends"),
    "ceindex.evaluation": ("indexer", "ceindex.distill"),
}
# importer -> packages it may use through their package facade (``__init__``) only
FACADE_ONLY: dict[str, tuple[str, ...]] = {"ceindex.evaluation": ("search_pipeline",)}


def layer_of(module: str) -> int | None:
    """The layer of a first-party module (longest matching entry), None when the table does not place it."""
    best: tuple[int, int] | None = None  # (length of the matched entry, layer)
    for layer, entries in LAYERS.items():
        for entry in entries:
            exact = entry.startswith("=")
            name = entry.lstrip("=")
            if module == name or (not exact and module.startswith(name + ".")):
                if best is None or len(name) > best[0]:
                    best = (len(name), layer)
    return best[1] if best else None


def is_first_party(module: str) -> bool:
    return module.split(".")[0] in FIRST_PARTY


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(source: str, module: str, package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) for every import in ``source``; ``from a import b`` names ``a.b`` when that is a module."""
    base = module.split(".") if package else module.split(".")[:-1]  # the package relative imports start from
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append((node.lineno, submodule if submodule in known else target))
    return list(dict.fromkeys(found))  # once per statement and module


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def private_owner(target: str) -> str | None:
    """The package that owns ``target`` privately (``pkg`` for ``pkg._x`` or ``pkg._x.y``), else None."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[:i])
    return None


def violations(sources: dict[str, tuple[str, bool]], known: set[str] | None = None) -> list[str]:
    """Every broken rule in ``sources`` (module name -> (source text, is a package)), one line each."""
    known = set(sources) | (known or set())
    out: list[str] = []
    for module, (source, package) in sorted(sources.items()):
        own = layer_of(module)
        if own is None:
            out.append(f"{module}: not placed in any layer (add it to LAYERS and ARCHITECTURE.md)")
            continue
        for line, target in imported_modules(source, module, package, known):
            if not is_first_party(target):
                continue
            theirs = layer_of(target)
            if theirs is None:
                out.append(f"{module}:{line} imports {target}, which is not placed in any layer")
            elif theirs > own:
                out.append(f"{module}:{line} (layer {own}) imports {target} (layer {theirs}, higher)")
            owner = private_owner(target)
            if owner is not None and not within(module, owner):
                out.append(f"{module}:{line} imports {target}, a private module of {owner or 'the top level'}")
            for importer, banned in INDEPENDENT.items():
                if within(module, importer) and any(within(target, b) for b in banned):
                    out.append(f"{module}:{line} imports {target}, but {importer} stays independent of it")
            for importer, facades in FACADE_ONLY.items():
                if within(module, importer) and any(target.startswith(f + ".") for f in facades):
                    out.append(f"{module}:{line} imports {target}; {importer} uses {target.split('.')[0]}'s "
                               "package facade only")
    return out


def repo_sources() -> dict[str, tuple[str, bool]]:
    sources = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            sources[module_name(path, REPO)] = (path.read_text(encoding="utf-8"), is_package(path))
    return sources


def test_imports_run_one_way() -> None:
    sources = repo_sources()
    assert {"ceindex.models.scorer", "ceindex.text", "search_pipeline.rerank", "ceindex.cli"} <= set(sources)
    found = violations(sources)
    assert not found, "imports against ARCHITECTURE.md's one-way rule:\n" + "\n".join(found)


def test_the_checker_reports_every_kind_of_violation() -> None:
    bad = """
from __future__ import annotations
import numpy as np
from ceindex.errors import ConfigError
from search_pipeline import SearchPipeline
from ceindex.commands import _options
from ..config import Settings

def later():
    import indexer.build
    from . import runtime
    from ._helper import x
"""
    sources = {
        "ceindex.models.fake": (bad, False),
        "ceindex.models.runtime": ("", False),
        "ceindex.models._helper": ("", False),
        "ceindex.commands._options": ("", False),
        "ceindex.nowhere": ("import os\n", False),
    }
    found = violations(sources)
    assert any("ceindex.models.fake:5 (layer 1) imports search_pipeline (layer 4" in v for v in found), found
    assert any("ceindex.models.fake:6 (layer 1) imports ceindex.commands._options (layer 6" in v for v in found)
    assert any("ceindex.models.fake:6 imports ceindex.commands._options, a private module of ceindex.commands" in v
               for v in found)
    assert any("ceindex.models.fake:7 (layer 1) imports ceindex.config (layer 2" in v for v in found), found
    assert any("ceindex.models.fake:10 (layer 1) imports indexer.build (layer 4" in v for v in found), found
    assert any(v.startswith("ceindex.nowhere: not placed") for v in found), found
    # allowed: third-party, the layer below, the own layer, a private module of the own package
    assert not any(":3 " in v or ":4 " in v or ":11 " in v or ":12 " in v for v in found), found
    assert len(found) == 6, found


def test_the_checker_keeps_siblings_independent_and_facades_narrow() -> None:
    sources = {
        "ceindex.distill.fake": ("from search_pipeline.rerank import x\nfrom ceindex.layers import y\n"
                                 "from ceindex.backends.embedded import bm25_tokenize\n", False),
        "ceindex.evaluation.fake": ("from search_pipeline.pipeline import STAGES\n"
                                    "from search_pipeline import SearchPipeline\n", False),
        "indexer.fake": ("import search_pipeline\n", False),
    }
    found = violations(sources)
    assert found == [
        "ceindex.distill.fake:1 imports search_pipeline.rerank, but ceindex.distill stays independent of it",
        "ceindex.distill.fake:3 imports ceindex.backends.embedded, but ceindex.distill stays independent of it",
        "ceindex.evaluation.fake:1 imports search_pipeline.pipeline; ceindex.evaluation uses search_pipeline's "
        "package facade only",
        "indexer.fake:1 imports search_pipeline, but indexer stays independent of it",
    ], found


def test_layer_table_places_each_name_once() -> None:
    assert layer_of("ceindex") == 6 and layer_of("ceindex.models.scorer") == 1
    assert layer_of("ceindex.data.corpus") == 0 and layer_of("ceindex.config") == 2
    assert layer_of("ceindex.unknown") is None  # "=ceindex" matches the package __init__ only
    entries = [e.lstrip("=") for names in LAYERS.values() for e in names]
    assert len(entries) == len(set(entries))


def test_architecture_md_shows_the_enforced_table() -> None:
    rows = {}
    for line in (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1][:1] == "L" and cells[1][1:].isdigit():
            names = cells[2].split("`")[1::2]
            rows[int(cells[1][1:])] = {n.removesuffix(".*").rstrip("/") for n in names}
    assert rows == {layer: {e.lstrip("=") for e in entries} for layer, entries in LAYERS.items()}
