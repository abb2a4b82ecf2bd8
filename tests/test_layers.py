"""The layers hold: `lint-imports` keeps every contract of pyproject.toml.

Run in every pytest run (so in CI): an import pointing up a layer, a backend
reached from generic code, a third-party cluster SDK outside its backend, or a
cycle inside a package fails here, naming the import.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "import-linter is missing: pip install -e '.[test]'"
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
    assert "0 broken" in proc.stdout


PROJECT = ("core", "cluster", "chaos", "healers", "reports")


def _function_level_project_imports() -> list[tuple[str, int, str, bool]]:
    """(file, line, module, has a comment on the line or the line above)."""
    found: dict[tuple[str, int], tuple[str, int, str, bool]] = {}
    for package in PROJECT:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            lines = source.splitlines()
            for fn in ast.walk(ast.parse(source)):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom):
                        module = node.module or ""
                    elif isinstance(node, ast.Import):
                        module = node.names[0].name
                    else:
                        continue
                    if module.split(".")[0] not in PROJECT:
                        continue
                    here = lines[node.lineno - 1]
                    above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                    rel = str(path.relative_to(ROOT))
                    found[(rel, node.lineno)] = (
                        rel,
                        node.lineno,
                        module,
                        "#" in here or above.startswith("#"),
                    )
    return sorted(found.values())


def test_every_function_level_project_import_says_why() -> None:
    # An import inside a function hides a cycle or a slow or optional
    # dependency; the comment says which, so the next reader need not guess.
    silent = [
        f"{f}:{n} imports {m}" for f, n, m, said in _function_level_project_imports() if not said
    ]
    assert silent == []


def test_the_import_scan_sees_function_level_imports() -> None:
    # The scan above must see the ones that are there (a scan that finds
    # nothing would pass for the wrong reason).
    assert any(m.startswith("cluster.lab") for _, _, m, _ in _function_level_project_imports())
