#!/usr/bin/env bash
# One-time set-up of the benchmark's own tools, apart from the server's venv:
# wrk, h2load (nghttp2-client) and valgrind (for bench/instructions.py) from Debian, and MLServer 1.7.1 with ONNX Runtime and matplotlib in bench/.venv-mlserver.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v wrk >/dev/null || ! command -v h2load >/dev/null || ! command -v valgrind >/dev/null; then
  apt-get update -q && apt-get install -y -q wrk nghttp2-client valgrind
fi
if [ ! -x .venv-mlserver/bin/mlserver ]; then
  python3 -m venv .venv-mlserver
  # uvloop 0.22 makes asyncio.get_event_loop() raise in MLServer's worker processes.
  .venv-mlserver/bin/pip install -q 'mlserver==1.7.1' onnxruntime matplotlib 'uvloop<0.22'
fi
