"""A full disk: the state records the failure and names the file that did not fit; the run resumes later."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from stable_baselines3.common.base_class import BaseAlgorithm

import rlpipe.runner as runner_module
from rlpipe.config import parse_pipeline
from rlpipe.jsonio import read_json
from rlpipe.runner import LocalRunner
from rlpipe.write_errors import RESERVE_FILE, WriteFailed

from .conftest import TINY


def test_disk_full_is_recorded_in_the_state_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    disk = {"full": False}
    real_save, real_write = BaseAlgorithm.save, runner_module.write_json_atomic

    def save(self: BaseAlgorithm, path: Any, *args: Any, **kwargs: Any) -> None:
        disk["full"] = True  # the first checkpoint fills the disk; the error names no file, as zipfile's does
        raise OSError(errno.ENOSPC, "No space left on device")

    def write_state(path: Any, data: Any) -> None:
        if disk["full"] and (out / RESERVE_FILE).exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(BaseAlgorithm, "save", save)
    monkeypatch.setattr(runner_module, "write_json_atomic", write_state)
    with pytest.raises(WriteFailed) as info:
        LocalRunner(parse_pipeline(TINY), out).run()
    assert info.value.errno == errno.ENOSPC
    state = read_json(out / "state.json")  # written thanks to the space reserve
    assert not (out / RESERVE_FILE).exists()
    assert state["status"] == "failed" and state["sessions"][0]["status"] == "failed"
    expected = f"could not write {out / 'stand' / 'checkpoints' / '.step-000000000128' / 'model.zip'}"
    for error in (state["sessions"][0]["error"], state["error"]):
        assert expected in error and "No space left on device" in error and "--resume" in error

    monkeypatch.setattr(BaseAlgorithm, "save", real_save)  # space freed
    disk["full"] = False
    state = LocalRunner(parse_pipeline(TINY), out, resume=True).run()
    assert state.status == "succeeded" and [s.timesteps for s in state.sessions] == [256, 256]
    assert (out / RESERVE_FILE).stat().st_size > 0  # kept again for the next time


def test_a_full_disk_in_a_library_writer_thread_names_its_file(tmp_path: Path) -> None:
    from rlpipe.write_errors import naming_full_disk

    def writer(filename: str) -> None:  # as tensorboard's event writer does, in its own thread
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteFailed, match=r"could not write .*events\.out: No space left on device; free space"):
        with naming_full_disk(tmp_path):
            writer(str(tmp_path / "events.out"))
    with pytest.raises(PermissionError):  # other errors pass unchanged
        with naming_full_disk(tmp_path):
            raise PermissionError(errno.EACCES, "denied")
