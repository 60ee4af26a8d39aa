"""Policy videos: recorded headless after the final evaluation, decodable, in the reports; no GL is no failure."""

from __future__ import annotations

import copy
import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import pytest
from PIL import Image

from rlpipe.cloud import steps
from rlpipe.cloud.store import RunKeys
from rlpipe.config import parse_pipeline
from rlpipe.jsonio import read_json
from rlpipe.outcome import SessionOutcome
from rlpipe.report.render import VIDEO_EMBED_MAX_BYTES, render_html, render_markdown
from rlpipe.runner import LocalRunner
from rlpipe.trainer import video as video_module
from rlpipe.trainer.video import FILMSTRIP_HEIGHT, frame_plan, record_video

from .test_cloud_steps import BUCKET, _through_first_session, aws  # noqa: F401  (aws: the moto fixture)

SMALL_VIDEO = {"enabled": True, "max_seconds": 1.0, "width": 160, "height": 128}


def _first_session_only(raw: dict[str, Any], video: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    raw["sessions"][0]["eval"] = {**raw["defaults"]["eval"], "video": video}
    return raw


def test_frame_plan_plays_in_real_time_at_most_30_fps() -> None:
    assert frame_plan(50, 20) == (2, 25.0, 500)  # the lifter: 20 ms steps
    assert frame_plan(125, 20) == (5, 25.0, 500)  # Hopper-v5: 8 ms steps
    assert frame_plan(30, 2) == (1, 30.0, 60)
    assert frame_plan(None, 1) == (1, 30.0, 30)  # no frame rate stated
    assert frame_plan(50, 0.01) == (2, 25.0, 1)


def test_session_records_a_video_that_decodes_and_reports_embed_it(tmp_path: Path, tiny_raw: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A first backend that cannot render: the next one is tried in a fresh process (as OSMesa after EGL).
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(video_module, "DEFAULT_BACKENDS", ("no-such-gl", "egl"))
    out = tmp_path / "run"
    raw = _first_session_only(tiny_raw, SMALL_VIDEO)
    raw["sessions"] = raw["sessions"][:1]
    state = LocalRunner(parse_pipeline(raw), out).run()
    assert state.status == "succeeded"
    stand = state.sessions[0]
    video = stand.video
    assert video is not None and video.status == "recorded", video
    assert video.gl_backend == "egl"
    model = out / "stand" / "model"

    # Read back: the frame count and size the outcome states.
    reader = imageio.get_reader(model / "video.mp4", format="FFMPEG")
    frames = [frame for frame in reader]  # list() would ask the stream reader for its (infinite) length
    reader.close()
    assert len(frames) == video.frames >= 1
    assert {f.shape for f in frames} == {(128, 160, 3)} and (video.width, video.height) == (160, 128)
    assert video.fps == 25.0 and video.seconds == pytest.approx(video.frames / 25.0)
    assert video.size_bytes == (model / "video.mp4").stat().st_size
    strip = Image.open(model / "filmstrip.png")
    assert strip.height == FILMSTRIP_HEIGHT and strip.width >= min(video.frames, 6) * 200
    # Beside the checkpoints too: SageMaker syncs that dir to S3 as plain objects.
    assert (out / "stand" / "checkpoints" / "video.mp4").read_bytes() == (model / "video.mp4").read_bytes()

    # The evaluation's statistics, seed and deterministic actions: the untrained policy falls within the
    # second, and its episode scores exactly what the final evaluation (one episode) measured.
    assert video.episode_rewards and video.episode_rewards[0] == pytest.approx(stand.final_eval_reward, abs=1e-5)

    # Recording is session time: the session ends after the video is written, so the hand-over excludes it.
    assert video.render_seconds and video.render_seconds > 0
    written = datetime.fromtimestamp((model / "video.mp4").stat().st_mtime).astimezone()
    assert datetime.fromisoformat(stand.ended_at) >= written
    assert read_json(model / "metrics.json")["video"]["render_seconds"] == video.render_seconds


    html = (out / "report.html").read_text()
    assert '<video class="policy"' in html and 'src="data:video/mp4;base64,' in html
    assert 'class="filmstrip"' in html and html.count("data:image/png;base64,") >= 2  # curve + filmstrip
    md = (out / "report.md").read_text()
    assert "## Policy videos" in md and "(<stand/model/filmstrip.png>)" in md
    report = read_json(out / "report.json")
    assert report["sessions"][0]["video"]["href"] == "stand/model/video.mp4"


def test_session_without_gl_succeeds_with_the_reason_recorded(tmp_path: Path, tiny_raw: dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "no-such-gl")  # the only backend tried when set
    raw = _first_session_only(tiny_raw, SMALL_VIDEO)
    raw["sessions"] = raw["sessions"][:1]
    out = tmp_path / "run"
    state = LocalRunner(parse_pipeline(raw), out).run()
    assert state.status == "succeeded" and state.sessions[0].status == "completed"
    video = state.sessions[0].video
    assert video is not None and video.status == "missing"
    assert video.reason.startswith("no OpenGL backend could render offscreen: no-such-gl: ")
    assert not (out / "stand" / "model" / "video.mp4").exists()
    assert (out / "stand" / "model" / "model.zip").exists()  # the bundle is whole
    metrics = read_json(out / "stand" / "model" / "metrics.json")
    assert metrics["video"]["status"] == "missing" and metrics["video"]["reason"] == video.reason
    html = (out / "report.html").read_text()
    assert "No video: no OpenGL backend could render offscreen: no-such-gl" in html and "<video" not in html
    assert "No video: no OpenGL backend" in (out / "report.md").read_text()
    assert "no video: no OpenGL backend" in (out / "run.log").read_text()


def test_a_large_video_is_linked_and_a_small_one_embedded() -> None:
    entry = {"name": "a", "status": "completed", "video": {
        "status": "recorded", "frames": 500, "fps": 25.0, "seconds": 20.0, "width": 480, "height": 480,
        "episodes": 1, "size_bytes": 0, "render_seconds": 61.0, "gl_backend": "egl",
        "href": "a/model/video.mp4", "filmstrip_href": "a/model/filmstrip.png"}}
    report = {"pipeline": "p", "status": "succeeded", "sessions": [entry]}
    large = render_html(report, None, {"a/model/video.mp4": b"x" * (VIDEO_EMBED_MAX_BYTES + 1)})
    assert 'src="a/model/video.mp4"' in large and "data:video/mp4" not in large
    assert 'src="a/model/filmstrip.png"' in large  # no bytes given: linked
    small = render_html(report, None, {"a/model/video.mp4": b"x" * 10, "a/model/filmstrip.png": b"png"})
    assert 'src="data:video/mp4;base64,eHh4' in small and 'src="data:image/png;base64,cG5n"' in small
    assert "recorded in 61.0 s (egl)" in small
    assert "![Frames of the final policy of a](<a/model/filmstrip.png>)" in render_markdown(report)


def test_video_turned_off_records_nothing_and_removes_an_earlier_one(tmp_path: Path,
                                                                   tiny_raw: dict[str, Any]) -> None:
    session = parse_pipeline(tiny_raw, check_envs=False).sessions[0]
    assert session.eval.video.enabled is False  # the tiny pipeline turns it off
    (tmp_path / "video.mp4").write_bytes(b"from an earlier attempt")
    video = record_video(session, tmp_path, seed=0)
    assert video.status == "disabled" and video.reason == "eval.video.enabled is false"
    assert not (tmp_path / "video.mp4").exists()
    entry = {"name": "a", "status": "completed", "video": video.model_dump(mode="json")}
    html = render_html({"pipeline": "p", "sessions": [entry]}, None)
    assert "No video: eval.video.enabled is false." in html and "<video" not in html


def test_a_stop_while_recording_ends_the_recording_not_the_session(tmp_path: Path, tiny_raw: dict[str, Any]) -> None:
    raw = _first_session_only(tiny_raw, SMALL_VIDEO)
    session = parse_pipeline(raw, check_envs=False).sessions[0]
    stop = threading.Event()
    stop.set()  # SIGTERM (SageMaker stop) or Ctrl-C: the trainer has little time left
    clock = time.perf_counter()
    video = record_video(session, tmp_path, seed=0, stop=stop)
    assert video.status == "missing" and video.reason.startswith("stopped while recording")
    assert time.perf_counter() - clock < 5 and not (tmp_path / "video.mp4").exists()


def test_a_failure_after_the_first_frame_is_not_taken_for_missing_gl(tmp_path: Path, tiny_raw: dict[str, Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "egl")
    session = parse_pipeline(_first_session_only(tiny_raw, SMALL_VIDEO), check_envs=False).sessions[0]
    video = record_video(session, tmp_path, seed=0)  # GL works, but the dir holds no bundle
    assert video.status == "missing"
    assert video.reason.startswith("recording failed: egl: FileNotFoundError") and "vecnormalize.pkl" in video.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written left in the model dir


def test_an_unreadable_video_record_leaves_the_rest_of_the_outcome() -> None:
    outcome = SessionOutcome.read({"timesteps": 256, "video": {"status": "lost", "frames": "many"}})
    assert outcome is not None and outcome.timesteps == 256 and outcome.video is None


def test_on_aws_the_report_and_the_email_link_the_video(aws: dict[str, Any], tiny_raw: dict[str, Any]) -> None:
    ctx, s3 = aws["ctx"], aws["s3"]
    run_id, job = _through_first_session(aws, tiny_raw)
    keys = RunKeys(run_id)
    metrics = json.loads(s3.get_object(Bucket=BUCKET, Key=keys.metrics("stand"))["Body"].read())
    metrics["video"] = {"status": "recorded", "file": "video.mp4", "filmstrip": "filmstrip.png", "frames": 5,
                        "fps": 25.0, "seconds": 0.2, "width": 160, "height": 128, "episodes": 1,
                        "size_bytes": 6, "gl_backend": "egl", "render_seconds": 9.5}
    s3.put_object(Bucket=BUCKET, Key=keys.metrics("stand"), Body=json.dumps(metrics))
    # The trainer writes both beside its checkpoints too; SageMaker syncs them to this prefix.
    s3.put_object(Bucket=BUCKET, Key=keys.checkpoints("stand") + "video.mp4", Body=b"mp4mp4")
    s3.put_object(Bucket=BUCKET, Key=keys.checkpoints("stand") + "filmstrip.png", Body=b"png")
    steps.record_session({"run_id": run_id, "index": 0, "try": 0, "job_name": job}, ctx)
    store = ctx.run_store(run_id)
    state = store.load_state()
    assert state.sessions[0].video is not None and state.sessions[0].video.render_seconds == 9.5

    report = steps.write_report(ctx, store, state)
    copied = s3.get_object(Bucket=BUCKET, Key=keys.root + "videos/stand.mp4")
    assert copied["Body"].read() == b"mp4mp4" and copied["ContentType"] == "video/mp4"
    video = report["sessions"][0]["video"]
    assert (video["href"], video["filmstrip_href"]) == ("videos/stand.mp4", "videos/stand.png")
    html = s3.get_object(Bucket=BUCKET, Key=keys.report("html"))["Body"].read().decode()
    assert 'src="data:video/mp4;base64,bXA0bXA0"' in html and 'src="data:image/png;base64,cG5n"' in html
    assert "(<videos/stand.png>)" in s3.get_object(Bucket=BUCKET, Key=keys.report("md"))["Body"].read().decode()
    _, body = steps.summary_message(report, steps.console_links(ctx, run_id, None))
    assert f"Policy videos:\n  stand: {video['url']}" in body and video["url"].endswith("videos/stand.mp4")
