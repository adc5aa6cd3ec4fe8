"""The committed gRPC code is exactly what tools/gen_proto.py generates from the .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_generated_code_is_reproducible() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_generated_code_runs_on_protobuf_5_29() -> None:
    """The protoc version guard in the pb2 module accepts the 5.29 runtime the lock pins."""
    import google.protobuf

    from saga.coordinator._proto import saga_coordinator_pb2 as pb

    assert google.protobuf.__version__.startswith("5.29.")
    assert pb.RouteRequest(session_id="s").SerializeToString()
