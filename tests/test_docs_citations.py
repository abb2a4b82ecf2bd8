"""Every source the report and the docstrings cite is in the repository (docs/)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"(?<![\w/])(?:docs/)?(FACTS|LAB-NOTES|DESIGN)\.md")


def _citations(path: Path) -> list[str]:
    return [m.group(0) for m in CITED.finditer(path.read_text(encoding="utf-8"))]


def test_the_expectations_cite_files_that_exist() -> None:
    cited = _citations(ROOT / "reports" / "expectations.yaml")
    assert len(cited) >= 10  # the notes of the handbook's claims
    for name in cited:
        assert name.startswith("docs/"), f"{name}: cite it as docs/{name}"
        assert (ROOT / name).is_file(), name


def test_code_in_reports_and_chaos_cites_docs() -> None:
    for path in [*(ROOT / "reports").glob("*.py"), *(ROOT / "chaos").rglob("*.py")]:
        for name in _citations(path):
            assert name.startswith("docs/") and (ROOT / name).is_file(), f"{path}: {name}"
