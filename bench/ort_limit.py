"""The ceiling: ONNX Runtime's own throughput in this process, batch sizes 1 to 64.

Same session options as the servers use by default (all cores for intra-op), random inputs
prepared beforehand, a fixed measuring time after a warm-up. Run it as a script to print one
JSON line per model: ``python bench/ort_limit.py --model mlp --model heavy``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import models  # noqa: E402

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def measure(path: Path, input_size: int, seconds: float, warmup: float) -> dict[str, float]:
    """Items per second at each batch size."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(1)
    result: dict[str, float] = {}
    for batch in BATCH_SIZES:
        feed = {"INPUT0": rng.standard_normal((batch, input_size)).astype(np.float32)}
        end = time.perf_counter() + warmup
        while time.perf_counter() < end:
            session.run(None, feed)
        runs = 0
        start = time.perf_counter()
        end = start + seconds
        while True:
            session.run(None, feed)
            runs += 1
            now = time.perf_counter()
            if now >= end:
                break
        result[str(batch)] = runs * batch / (now - start)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--model", action="append", choices=["identity", "mlp", "heavy"], required=True
    )
    parser.add_argument(
        "--cache", type=Path, default=Path("/tmp/bench-models") / models.fingerprint()
    )
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args(argv)
    for stem in args.model:
        spec = models.BY_NAME[stem]
        per_batch = measure(
            models.onnx_path(args.cache, spec.onnx_file), spec.input_size, args.seconds, args.warmup
        )
        best = max(per_batch, key=lambda b: per_batch[b])
        print(
            json.dumps(
                {
                    "model": stem,
                    "items_per_s": per_batch,
                    "best_batch": int(best),
                    "best": per_batch[best],
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
