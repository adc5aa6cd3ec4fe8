"""`saga bench --out DIR --resume`: a bench killed part-way resumes from the runs on disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from saga.cli.main import app

runner = CliRunner()
ARGS = ["bench", "--smoke", "--tables", "6,7", "--seeds", "2"]


def _tables(out: Path) -> dict[str, object]:
    return {p.name: json.loads(p.read_text()) for p in sorted(out.glob("table*.json"))}


def test_killed_bench_resumes_with_the_runs_on_disk(tmp_path: Path) -> None:
    # In this process, one worker: results do not depend on how many processes ran them.
    ref = runner.invoke(app, [*ARGS, "--workers", "1", "--out", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    total = json.loads((tmp_path / "ref" / "bench.json").read_text())["jobs"]

    out = tmp_path / "killed"
    saga = shutil.which("saga", path=str(Path(sys.executable).parent))
    assert saga is not None
    # Two worker processes, the parent writing each run as it completes; in a session of its
    # own, so that the kill reaches the workers too.
    proc = subprocess.Popen([saga, *ARGS, "--workers", "2", "--out", str(out)],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(list((out / "runs").glob("*.json"))) < 3 and proc.poll() is None:
            assert time.monotonic() < deadline, "no run file within 60 s"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the bench finished before it was killed"
    on_disk = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert 3 <= len(on_disk) < total
    assert not (out / "report.md").exists()

    res = runner.invoke(app, [*ARGS, "--workers", "1", "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert f"({len(on_disk)} of {total} reused, {total - len(on_disk)} run now)" in text
    # The runs on disk were loaded, not run again and rewritten.
    assert all(p.stat().st_mtime_ns == t for p, t in on_disk.items())
    assert len(list((out / "runs").glob("*.json"))) == total
    assert _tables(out) == _tables(tmp_path / "ref") and len(_tables(out)) == 2
    bench = json.loads((out / "bench.json").read_text())
    assert bench["reused"] == len(on_disk) and bench["jobs"] == total


def test_resume_needs_out() -> None:
    res = runner.invoke(app, ["bench", "--smoke", "--resume"])
    assert res.exit_code == 2 and "--resume needs --out" in res.output
