"""``python -m chaos [--trials N] [--seed S] [--out DIR]``: kill trials, then damaged files, lock, full disk.

Prints one line per trial and per case, then a summary; exits 1 on any loss. A failing trial keeps its
directory (run, log, temp dir) under ``--out``; the same ``--seed`` replays the same kills.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import time
from pathlib import Path

from chaos import cases, checks, procs, trials
from rlpipe.config import load_pipeline

CONFIG = Path(__file__).resolve().parent / "curriculum.yaml"


def _reference(base: Path) -> tuple[Path, float]:
    out, tmp = base / "reference" / "run", base / "reference" / "tmp"
    tmp.mkdir(parents=True)
    clock = time.monotonic()
    proc = procs.start_run(CONFIG, out, tmp, base / "reference" / "log.txt", resume=False)
    if proc.wait(timeout=trials.RUN_TIMEOUT) != 0:
        sys.exit(f"the uninterrupted reference run failed (exit {proc.returncode}); see {base / 'reference'}")
    return out, time.monotonic() - clock


def _interrupted(base: Path) -> Path:
    """A run stopped by SIGTERM after the second session's first checkpoint."""
    out, tmp = base / "interrupted" / "run", base / "interrupted" / "tmp"
    tmp.mkdir(parents=True)
    proc = procs.start_run(CONFIG, out, tmp, base / "interrupted" / "log.txt", resume=False)
    while proc.poll() is None and not list((out / "hold" / "checkpoints").glob("step-*/manifest.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=trials.RUN_TIMEOUT)
    procs.wait_group_empty(proc.pid, 5)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs") / "chaos")
    ns = parser.parse_args()
    base = ns.out.resolve()
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    pipeline = load_pipeline(CONFIG)
    reference, seconds = _reference(base)
    problems = checks.verify_finished(reference, pipeline)
    print(f"reference run: {seconds:.1f}s, {'ok' if not problems else 'LOSS: ' + '; '.join(problems)}", flush=True)
    lost = bool(problems)

    results = []
    for number in range(1, ns.trials + 1):
        trial = trials.run_trial(number, random.Random(f"{ns.seed}-{number}"), CONFIG, pipeline, base, reference,
                                 seconds)
        results.append(trial)
        print(trial.line(), flush=True)
    interrupted = _interrupted(base)
    fixed = [*cases.corruption(CONFIG, reference, interrupted, base), cases.lock(CONFIG, base),
             cases.disk_full(CONFIG, base)]
    for name, ok, detail in fixed:
        print(f"{name:<42} {'ok' if ok else 'LOSS'}: {detail}", flush=True)

    failed = [t for t in results if t.losses]
    by_mode = {m: sum(1 for t in results if t.mode == m) for m in trials.MODES}
    print(f"summary: {len(results) - len(failed)}/{len(results)} trials without loss "
          f"({', '.join(f'{m} {n}' for m, n in by_mode.items())}); "
          f"{sum(ok for _, ok, _ in fixed)}/{len(fixed)} fixed cases passed; seed {ns.seed}", flush=True)
    lost = lost or bool(failed) or not all(ok for _, ok, _ in fixed)
    if not lost:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"kept for inspection: {base}", flush=True)
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
