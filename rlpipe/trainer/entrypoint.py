"""The training program: ``rlpipe-train`` locally, ``train`` in the SageMaker image.

Exit codes: 0 session completed; 143 stopped by SIGTERM/SIGINT after saving a checkpoint (a restart resumes
from it); 1 failed, with the reason in ``<root>/output/failure`` (SageMaker's FailureReason); 2 a file it reads
(``session.json``) is damaged, named in the same place.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType

from rlpipe.contract import DEFAULT_ROOT, ContainerPaths
from rlpipe.integrity import DamagedFile
from rlpipe.state import utcnow

EXIT_INTERRUPTED = 143
EXIT_DAMAGED = 2  # an input file (session.json, the previous bundle's manifest) is damaged
log = logging.getLogger("rlpipe.trainer")


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM (SageMaker stop, spot reclaim) and SIGINT set ``stop``; the trainer checkpoints and returns."""

    def _handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():  # a second Ctrl-C means: stop now
            raise KeyboardInterrupt
        log.warning("received %s: checkpointing and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def main(argv: list[str] | None = None) -> int:
    """Run one session from the container contract under ``--root`` (default /opt/ml or $RLPIPE_ROOT)."""
    started_at = utcnow()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["train"]:  # SageMaker runs `docker run IMAGE train`
        args = args[1:]
    parser = argparse.ArgumentParser(prog="rlpipe-train", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("RLPIPE_ROOT", DEFAULT_ROOT)),
                        help="container-contract root (default: /opt/ml)")
    ns = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = ContainerPaths(ns.root)
    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        from rlpipe.trainer.session import SessionTrainer

        result = SessionTrainer(paths, stop=stop, started_at=started_at).run()
    except DamagedFile as exc:  # a known cause: one line, no traceback
        paths.write_failure(str(exc))
        log.error("%s", exc)
        return EXIT_DAMAGED
    except Exception as exc:
        paths.write_failure(f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        return 1
    if result.status == "interrupted":
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
