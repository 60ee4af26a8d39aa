"""Run one pipeline with the local runner in this process: ``python -m bench.pipeline_run PIPELINE_JSON OUT_DIR``.

The benchmarks start one of these per run, so every run begins in a fresh interpreter as ``rlpipe run`` does.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from rlpipe.config import parse_pipeline
from rlpipe.runner import LocalRunner


def main(argv: list[str]) -> int:
    """Run the pipeline in the JSON file ``argv[0]`` into the directory ``argv[1]``; 0 if it succeeded."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pipeline = parse_pipeline(json.loads(Path(argv[0]).read_text()))
    state = LocalRunner(pipeline, Path(argv[1])).run()
    return 0 if state.status == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
