"""Every ``benchmarks/...md`` that the package's code, the README or the guide names exists (a
file a command on the same line writes, such as a GPU run's report, excepted)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATH = re.compile(r"benchmarks/[\w./*-]*\.md")


def _missing(text: str, where: str) -> list[str]:
    missing = []
    for n, line in enumerate(text.splitlines(), 1):
        for name in PATH.findall(line):
            if "writes" in line or any(ROOT.glob(name)):
                continue
            missing.append(f"{where}:{n}: {name}")
    return missing


def test_named_benchmark_results_exist():
    sources = sorted((ROOT / "src").rglob("*.py")) + [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    sources += sorted((ROOT / "docs").rglob("*.md"))
    found, missing = 0, []
    for path in sources:
        text = path.read_text()
        found += len(PATH.findall(text))
        missing += _missing(text, str(path.relative_to(ROOT)))
    assert found >= 5  # the pattern finds the references
    assert missing == [], missing


def test_a_moved_file_is_reported():
    text = "see benchmarks/RESULTS_no_such_study.md\nbench.py writes benchmarks/RESULTS_X.md"
    assert _missing(text, "f") == ["f:1: benchmarks/RESULTS_no_such_study.md"]
