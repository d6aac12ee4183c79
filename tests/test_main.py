"""``python -m torch_bam`` is the ``torch-bam`` command."""

import subprocess
import sys


def test_python_dash_m_runs_the_command():
    proc = subprocess.run(
        [sys.executable, "-m", "torch_bam", "profile", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: torch-bam profile")
    bad = subprocess.run(
        [sys.executable, "-m", "torch_bam", "profile", "no_such_net"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown model 'no_such_net'" in bad.stderr
