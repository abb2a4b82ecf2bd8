"""The layers hold: `lint-imports` keeps every contract of pyproject.toml.

Run in every pytest run (so in CI): an import pointing up a layer, a backend
reached from generic code, a third-party cluster SDK outside its backend, or a
cycle inside a package fails here, naming the import.
"""

from __future__ import annotations

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
