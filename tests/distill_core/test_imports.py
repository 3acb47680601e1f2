"""distill_core imports only torch, the standard library and itself."""

import ast
import sys
from pathlib import Path

import distill_core

PACKAGE_DIR = Path(distill_core.__file__).parent
ALLOWED = {"torch", "distill_core", "__future__"} | set(sys.stdlib_module_names)


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: stays inside the package
                continue
            roots.add(node.module.split(".")[0])
    return roots


def test_distill_core_imports_only_torch_and_the_standard_library():
    modules = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(modules) >= 8
    offenders = {
        str(path.relative_to(PACKAGE_DIR)): sorted(_imported_roots(path) - ALLOWED)
        for path in modules
    }
    offenders = {name: roots for name, roots in offenders.items() if roots}
    assert offenders == {}, f"distill_core must import only torch and stdlib: {offenders}"


def test_the_check_can_fail(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("import numpy\nfrom transformers import AutoModel\nimport os\n")
    assert _imported_roots(module) - ALLOWED == {"numpy", "transformers"}
