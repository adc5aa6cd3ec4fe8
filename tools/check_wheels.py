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
    "saga_kernels": ["saga.kernels", "saga.kernels.experimental.cuda", "saga.kernels.bench"],
    "saga_vllm": ["saga.vllm"],
    "saga_integrations": ["saga.integrations", "saga.integrations.langchain",
                          "saga.integrations.autogen", "saga.integrations.crewai"],
    "saga_coordinator": ["saga.coordinator.server", "saga.coordinator.client",
                         "saga.coordinator.cluster"],
    "saga_bench": ["saga.bench", "saga.bench.sim", "saga.bench.tables", "saga.bench.report"],
    "saga": ["saga.cli.main"],
}
# distribution -> a statement that must run in its venv (package data, entry points)
CHECKS: dict[str, str] = {
    "saga_policy": "from saga.policy.traces import BUNDLED_AGENT, bundled_trace_path; "
                   "bundled_trace_path(); bundled_trace_path(BUNDLED_AGENT)",
    # Alone, no framework is installed: the adapters import, and attach() would name the extra.
    "saga_integrations": "from saga.integrations import framework_status as fs; "
                         "r = [fs(n) for n in ('langchain', 'autogen', 'crewai')]; "
                         "assert all(not s.attachable and f'saga-integrations[{s.name}]' "
                         "in s.reason for s in r), r",
    # The wheel built here (a compiler is present) must carry the native host kernels, and say so.
    "saga_kernels": "from saga.kernels import native_status; rows = native_status(); "
                    "print(*(f'{r.name}: {r.backend} ({r.detail})' for r in rows), sep=chr(10)); "
                    "assert all(r.backend == 'native' for r in rows if r.kind == 'host'), rows",
    # The generated gRPC code ships in the wheel and runs on the installed protobuf.
    "saga_coordinator": "from saga.coordinator._proto import saga_coordinator_pb2 as pb; "
                        "pb.RouteRequest(session_id='s').SerializeToString()",
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
