"""Regenerate the Python gRPC stubs from proto/neeko_npc/v1/dialogue.proto.

    python -m neeko_npc.protogen            # rewrite neeko_npc/v1/dialogue_pb2*.py
    python -m neeko_npc.protogen --check    # exit 1 if the committed stubs are stale

Needs grpcio-tools (in the [test] extra); the daemon itself only needs grpcio and protobuf.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("neeko_npc/v1/dialogue.proto")
OUTPUTS = ("dialogue_pb2.py", "dialogue_pb2.pyi", "dialogue_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    args = ["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}",
            str(ROOT / "proto" / PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return [out_dir / "neeko_npc" / "v1" / name for name in OUTPUTS]


def stale() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [p.name for p in fresh if not (ROOT / "neeko_npc" / "v1" / p.name).is_file()
                or (ROOT / "neeko_npc" / "v1" / p.name).read_text() != p.read_text()]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        bad = stale()
        if bad:
            print(f"stale generated stubs: {', '.join(bad)}; run: python -m neeko_npc.protogen", file=sys.stderr)
            return 1
        print("stubs are up to date")
        return 0
    for p in generate(ROOT):
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
