"""The fixed cases after the kill trials: damaged files, two processes on one run directory, a full disk."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from chaos import procs
from rlpipe.jsonio import read_json
from rlpipe.rundir_lock import LOCK_FILE

Result = tuple[str, bool, str]  # name, passed, detail


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != LOCK_FILE}


def _truncate(rel: str) -> Callable[[Path], Path]:
    def damage(run: Path) -> Path:
        p = run / rel
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
        return p
    return damage


def _write(rel: str, text: str) -> Callable[[Path], Path]:
    def damage(run: Path) -> Path:
        (run / rel).write_text(text)
        return run / rel
    return damage


def _delete(rel: str) -> Callable[[Path], Path]:
    def damage(run: Path) -> Path:
        (run / rel).unlink()
        return run / rel
    return damage


def _empty_manifest(run: Path) -> Path:
    p = sorted((run / "hold" / "checkpoints").glob("step-*/manifest.json"))[0]
    p.write_text("")
    return p


# name: (damage, returning the file it damaged; which run it damages and which command must refuse it)
DAMAGES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "state.json empty": (_write("state.json", ""), "run"),
    "state.json truncated": (_truncate("state.json"), "run"),
    "state.json wrongly shaped": (_write("state.json", '{"sessions": 3}'), "run"),
    "bundle.json truncated": (_truncate("stand/model/bundle.json"), "run"),
    "model.zip missing": (_delete("hold/model/model.zip"), "run"),
    "metrics.json wrongly shaped": (_write("lift/model/metrics.json", '{"evaluations": {}}'), "run"),
    "checkpoint manifest empty": (_empty_manifest, "run-interrupted"),
    "checkpoint metrics.json truncated": (_truncate("hold/checkpoints/metrics.json"), "run-interrupted"),
    "session.json truncated": (_truncate("hold/input/data/config/session.json"), "train"),
}


def corruption(config: Path, reference: Path, interrupted: Path, base: Path) -> list[Result]:
    """Each damage on a copy of a finished (or interrupted) run: exit 2, one line naming the file, no change."""
    results: list[Result] = []
    for name, (damage, command) in DAMAGES.items():
        run = base / "corrupt" / name.replace(" ", "-")
        shutil.copytree(interrupted if command == "run-interrupted" else reference, run, symlinks=True)
        damaged = damage(run)
        before = _tree(run)
        if command == "train":
            args = [*procs.RLPIPE, "train", "--root", str(run / "hold")]
        else:
            args = [*procs.RLPIPE, "run", str(config), "--output", str(run), "--resume"]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
        lines = [line for line in proc.stderr.strip().splitlines() if line]
        named = str(damaged) in proc.stderr
        problems = []
        if proc.returncode != 2:
            problems.append(f"exit {proc.returncode}")
        if not named:
            problems.append("file not named")
        if "Traceback" in proc.stderr or (command != "train" and len(lines) != 1):
            problems.append(f"{len(lines)} lines of error")
        after = _tree(run)
        if command == "train":  # the trainer records why it failed, as SageMaker reads it
            after.pop("hold/output/failure", None)
        if after != before:
            problems.append("run directory changed")
        results.append((f"corrupt: {name}", not problems, "; ".join(problems) or lines[-1][:150]))
        if not problems:
            shutil.rmtree(run)
    return results


def lock(config: Path, base: Path) -> Result:
    """A second run on a run directory in use is refused naming the holder's PID; the holder is unharmed."""
    out, tmp = base / "lock" / "run", base / "lock" / "tmp"
    tmp.mkdir(parents=True)
    first = procs.start_run(config, out, tmp, base / "lock" / "log.txt", resume=False)
    try:
        deadline = time.monotonic() + 120
        while not (out / "state.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run([*procs.RLPIPE, "run", str(config), "--output", str(out), "--resume"],
                                capture_output=True, text=True, timeout=120)
        ok = second.returncode == 2 and f"PID {first.pid}" in second.stderr and first.poll() is None
        detail = second.stderr.strip().splitlines()[-1][:150] if second.stderr.strip() else f"exit {second.returncode}"
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=300)
        procs.wait_group_empty(first.pid, 5)
    ok = ok and first.returncode in (0, 143)
    if ok:
        shutil.rmtree(base / "lock")
    return ("lock: second process refused", ok, detail)


def disk_full(config: Path, base: Path) -> Result:
    """On a tmpfs too small for the run (root only): the state records the failure naming the file; once the
    tmpfs grows, --resume finishes the run."""
    mount = base / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        return ("disk full: skipped", True, f"cannot mount a tmpfs here ({made.stderr.strip() or 'not root'})")
    try:
        out, tmp = mount / "run", base / "tmpfs-tmp"
        tmp.mkdir()
        proc = procs.start_run(config, out, tmp, base / "tmpfs-log.txt", resume=False)
        proc.wait(timeout=600)
        procs.wait_group_empty(proc.pid, 5)
        state = read_json(out / "state.json")
        failed = state["status"] == "failed" and "No space left on device" in (state.get("error") or "")
        named = "could not write " + str(out) in (state.get("error") or "")
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        resumed = procs.start_run(config, out, tmp, base / "tmpfs-log.txt", resume=True)
        resumed.wait(timeout=600)
        procs.wait_group_empty(resumed.pid, 5)
        done = read_json(out / "state.json")["status"] == "succeeded"
        detail = (f"exit {proc.returncode}, state {state['status']}: {(state.get('error') or '')[:110]}; "
                  f"resumed: {'succeeded' if done else 'not finished'}")
        return ("disk full: recorded, resumable", failed and named and done and proc.returncode == 1, detail)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
