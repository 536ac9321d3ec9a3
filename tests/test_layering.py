"""Layering: convert/ sits below validate/ (validate compares what convert wrote), so convert/ never imports it.

Every module of convert/ is parsed, not imported: imports inside functions (the lazy ones that keep torch
out of the CLI's start-up) count as much as the ones at the top, and relative imports are resolved against
the package convert/ installs as (``qconv.convert``).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONVERT = REPO / "convert"
FORBIDDEN = "qconv.validate"


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``source``, a module of ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # ``from qconv import validate`` names the package in the imported names, not in the module
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(root: Path, package: str, forbidden: str) -> list[str]:
    """``file:line: imports module`` for each import of ``forbidden`` under ``root`` (one entry per line)."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        sub = path.relative_to(root).with_suffix("").parts
        module_package = ".".join((package, *sub[:-1]))  # the package this module's relative imports start from
        seen = set()
        for line, module in imported_modules(path.read_text(encoding="utf-8"), module_package):
            if _is_under(module, forbidden) and line not in seen:
                seen.add(line)
                bad.append(f"{path.relative_to(root.parent)}:{line}: imports {module}")
    return bad


def test_convert_does_not_import_validate():
    assert sorted(CONVERT.glob("*.py")), "convert/ has no modules: the test would pass vacuously"
    bad = violations(CONVERT, "qconv.convert", FORBIDDEN)
    assert not bad, "convert/ must not import validate/:\n" + "\n".join(bad)


def test_the_check_sees_every_form_of_import(tmp_path):
    """The parser finds top-level, lazy, relative, from-package and importlib imports of validate/."""
    root = tmp_path / "convert"
    root.mkdir()
    (root / "bad.py").write_text(
        "import qconv.validate.fallback\n"
        "from ..validate.runner import x\n"
        "from qconv import validate\n"
        "def f():\n"
        "    from qconv.validate.fallback import analyse\n"
        "    import importlib\n"
        "    importlib.import_module('qconv.validate.metrics')\n"
    )
    (root / "good.py").write_text(
        "from .optimize import optimize\nfrom qconv.kernels import analyse\nimport qconv.validated_elsewhere\n"
    )
    bad = violations(root, "qconv.convert", FORBIDDEN)
    lines = [entry.split(": imports ")[0].rsplit(":", 1)[1] for entry in bad]
    assert lines == ["1", "2", "3", "5", "7"], bad
    assert all("bad.py" in entry for entry in bad)
