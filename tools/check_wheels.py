"""Build every workspace wheel and prove each installs alone with pip into an empty venv.

For each distribution: a fresh `python -m venv`, `pip install <its wheel>` with only the freshly
built sibling wheels as extra find-links (third-party dependencies come from the configured
index), then import each of its modules. Exits non-zero naming the wheel that failed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# distribution -> modules that must import from its wheel alone (plus its dependencies)
IMPORTS: dict[str, list[str]] = {
    "saga_aeg": ["saga.aeg"],
    "saga_policy": ["saga.policy", "saga.policy.traces"],
    "saga_vllm": ["saga.vllm"],
    "saga_bench": ["saga.bench", "saga.bench.sim", "saga.bench.tables", "saga.bench.report"],
    "saga": ["saga.cli.main"],
}
# distribution -> a statement that must run in its venv (package data, entry points)
CHECKS: dict[str, str] = {
    "saga_policy": "from saga.policy.traces import BUNDLED_AGENT, bundled_trace_path; "
                   "bundled_trace_path(); bundled_trace_path(BUNDLED_AGENT)",
    "saga_bench": "from saga.bench.costmodel import check_published_rates; "
                  "assert all(r.ok for r in check_published_rates())",
    "saga": "import shutil, subprocess, sys; "
            "subprocess.run([shutil.which('saga', path=sys.prefix + '/bin'), '--help'], "
            "check=True, capture_output=True)",
}


def run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="saga-wheels-") as tmp:
        dist = Path(tmp) / "dist"
        run(["uv", "build", "--all-packages", "--wheel", "-o", str(dist)], cwd=ROOT)
        wheels = sorted(dist.glob("*.whl"))
        built = {w.name.split("-")[0]: w for w in wheels}
        missing = sorted(set(IMPORTS) - set(built))
        if missing:
            print(f"no wheel was built for {missing}; built: {sorted(built)}", file=sys.stderr)
            return 1
        for name, modules in IMPORTS.items():
            venv = Path(tmp) / f"venv-{name}"
            run([sys.executable, "-m", "venv", str(venv)])
            py = str(venv / "bin" / "python")
            run([py, "-m", "pip", "install", "-q", "--find-links", str(dist), str(built[name])])
            code = "; ".join(f"import {m}" for m in modules)
            code += "; " + CHECKS.get(name, "pass") + "; print('ok')"
            run([py, "-c", code], cwd=tmp)  # not the repo: import from the installed wheel
            print(f"{name}: wheel installs alone and imports {', '.join(modules)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
