"""The policy video: a session's handed-over policy recorded headless to ``video.mp4``, plus a filmstrip PNG.

Recording runs in a child process, one per OpenGL backend tried (EGL, then OSMesa; only ``$MUJOCO_GL`` when
it is set). MuJoCo's offscreen context and PyOpenGL fix their platform when first imported, so a backend that
fails cannot be swapped for another in the same process; a GL driver that crashes takes only the child down.
The child loads the bundle the session has just written (policy and VecNormalize statistics), so the video
shows exactly the policy that is handed over, acting deterministically on the evaluation's env and seed.

Whatever goes wrong, :func:`record_video` returns a :class:`VideoOutcome` saying why there is no video; it
never raises, and a missing video never fails a session.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlpipe.config import SessionConfig
from rlpipe.contract import FILMSTRIP_FILE, MODEL_FILE, VECNORMALIZE_FILE, VIDEO_FILE
from rlpipe.jsonio import write_bytes_atomic, write_json_atomic
from rlpipe.outcome import VideoOutcome

log = logging.getLogger(__name__)

DEFAULT_BACKENDS = ("egl", "osmesa")
MAX_FPS = 30.0  # the env's frame rate is thinned to this (every k-th step), so a video plays in real time
FALLBACK_FPS = 30.0  # for an env that states no render_fps
FILMSTRIP_FRAMES = 6
FILMSTRIP_HEIGHT = 160
FILMSTRIP_GAP = 4
# Offscreen rendering is software rendering on CPU instances (Mesa llvmpipe). Multisampling multiplies its
# cost per pixel and MuJoCo's default 4096-pixel shadow map dominates small frames: with both reduced a
# 480x480 frame renders about 3x faster, shadows kept (measured on 2 cores).
OFFSCREEN_SAMPLES = 0
SHADOW_SIZE = 1024
# The child gets this long to start and this much per frame before it is considered hung.
START_SECONDS = 120.0
SECONDS_PER_FRAME = 2.0
EXIT_NO_GL = 3  # the child could not render a first frame with its backend: the next one is tried
POLL_SECONDS = 0.25
# Written by the child and renamed when complete; removed if it never completes (the model dir is the bundle).
PARTIAL_VIDEO = f".{VIDEO_FILE}.partial.mp4"
PARTIAL_FILMSTRIP = f".{FILMSTRIP_FILE}.partial.png"


@dataclass(frozen=True)
class VideoRequest:
    """What the recording child needs: the bundle, the env and how much to record."""

    model_dir: str
    algorithm: str
    env_id: str
    env_kwargs: dict[str, Any]
    normalize: bool
    seed: int
    episodes: int
    max_seconds: float
    width: int
    height: int


def frame_plan(render_fps: float | None, max_seconds: float) -> tuple[int, float, int]:
    """(steps per frame, video fps, most frames) for an env stepping at ``render_fps`` steps per second.

    Every k-th step is a frame, k the smallest that keeps the video at or below :data:`MAX_FPS`; the video then
    plays in real time. An env without a frame rate is played at :data:`FALLBACK_FPS`, one frame per step.
    """
    if not render_fps or render_fps <= 0:
        return 1, FALLBACK_FPS, max(1, int(max_seconds * FALLBACK_FPS))
    stride = max(1, math.ceil(render_fps / MAX_FPS - 1e-9))
    fps = render_fps / stride
    return stride, fps, max(1, int(max_seconds * fps + 1e-9))


def _backends() -> list[str]:
    chosen = os.environ.get("MUJOCO_GL", "").strip()
    return [chosen] if chosen else list(DEFAULT_BACKENDS)


def _remove_stale(*directories: Path) -> None:
    """An earlier attempt's video must not stand for this one's."""
    for directory in directories:
        for name in (VIDEO_FILE, FILMSTRIP_FILE, PARTIAL_VIDEO, PARTIAL_FILMSTRIP):
            (directory / name).unlink(missing_ok=True)


def record_video(session: SessionConfig, model_dir: Path, seed: int, stop: threading.Event | None = None,
                 copy_to: Path | None = None) -> VideoOutcome:
    """Record ``session``'s bundle in ``model_dir`` to ``video.mp4`` and ``filmstrip.png`` there (and copies in
    ``copy_to``: the checkpoint dir, which SageMaker syncs to S3 as plain objects). Never raises."""
    settings = session.eval.video
    clock = time.perf_counter()
    try:
        _remove_stale(model_dir, *([copy_to] if copy_to else []))
        if not settings.enabled:
            return VideoOutcome(status="disabled", reason="eval.video.enabled is false")
        request = VideoRequest(str(model_dir), session.algorithm, session.env, dict(session.env_kwargs),
                               session.normalize, seed, settings.episodes, settings.max_seconds, settings.width,
                               settings.height)
        log.info("session %s: recording the final policy (up to %g s of video)", session.name, settings.max_seconds)
        video = _record(request, stop or threading.Event())
        if video.status == "recorded" and copy_to is not None:
            copy_to.mkdir(parents=True, exist_ok=True)
            for name in (VIDEO_FILE, FILMSTRIP_FILE):
                write_bytes_atomic(copy_to / name, (model_dir / name).read_bytes())
    except Exception as exc:  # a video must never cost the session
        video = VideoOutcome(status="missing", reason=f"{type(exc).__name__}: {exc}")
    video.render_seconds = round(time.perf_counter() - clock, 3)
    if video.status == "recorded":
        log.info("session %s: video of %d frames (%.1f s, %d KB) recorded in %.1f s with %s", session.name,
                 video.frames or 0, video.seconds or 0, (video.size_bytes or 0) // 1024, video.render_seconds,
                 video.gl_backend)
    elif video.status == "missing":
        log.warning("session %s: no video: %s", session.name, video.reason)
    return video


def _record(request: VideoRequest, stop: threading.Event) -> VideoOutcome:
    """Try each backend in a child until one records; the reasons of those that failed if none does."""
    failures: list[str] = []
    scratch = Path(tempfile.mkdtemp(prefix="rlpipe-video-"))
    try:
        request_file = scratch / "request.json"
        write_json_atomic(request_file, asdict(request))
        _, _, most_frames = frame_plan(None, request.max_seconds)
        timeout = START_SECONDS + SECONDS_PER_FRAME * most_frames
        all_gl = True  # whether every backend failed at its first frame
        for backend in _backends():
            result_file = scratch / f"result-{backend}.json"
            code, stderr = _run_child(backend, request_file, result_file, scratch, stop, timeout)
            result = _read_result(result_file)
            if code == 0 and result.get("frames"):
                return VideoOutcome(status="recorded", file=VIDEO_FILE, filmstrip=FILMSTRIP_FILE, gl_backend=backend,
                                    size_bytes=(Path(request.model_dir) / VIDEO_FILE).stat().st_size,
                                    **{k: result[k] for k in ("frames", "fps", "seconds", "width", "height",
                                                              "episodes", "episode_rewards")})
            failures.append(f"{backend}: {result.get('error') or stderr or f'exited with code {code}'}")
            if stop.is_set() or code != EXIT_NO_GL:
                all_gl = False
                break  # stopped, or the backend rendered and something else failed: another would fail too
        prefix = "stopped while recording" if stop.is_set() else \
            "no OpenGL backend could render offscreen" if all_gl else "recording failed"
        return VideoOutcome(status="missing", reason=f"{prefix}: " + "; ".join(failures))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for name in (PARTIAL_VIDEO, PARTIAL_FILMSTRIP):  # a child that failed or was stopped midway
            (Path(request.model_dir) / name).unlink(missing_ok=True)


def _read_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_child(backend: str, request_file: Path, result_file: Path, scratch: Path, stop: threading.Event,
               timeout: float) -> tuple[int | None, str]:
    """Run the recording child with ``backend``; (exit code or None when stopped or timed out, stderr tail)."""
    env = dict(os.environ, MUJOCO_GL=backend)
    if backend in ("egl", "osmesa"):
        env["PYOPENGL_PLATFORM"] = backend  # PyOpenGL picks its platform from this, once, at import
    else:
        env.pop("PYOPENGL_PLATFORM", None)
    err_file = scratch / f"stderr-{backend}.txt"
    with open(err_file, "wb") as err:
        # A session of its own: a terminal's Ctrl-C reaches the trainer, which decides (and stops the child).
        proc = subprocess.Popen([sys.executable, "-m", "rlpipe.trainer.video", str(request_file), str(result_file)],
                                env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout
        code: int | None = None
        while True:
            try:
                code = proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if stop.is_set() or time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    tail = "stopped" if stop.is_set() else f"no result after {timeout:.0f} s"
                    return None, tail
    return code, _tail(err_file)


def _tail(path: Path, lines: int = 3, limit: int = 500) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-limit:]


# ---- the child -------------------------------------------------------------------------------------------------

def _make_render_env(request: VideoRequest) -> Any:
    import gymnasium

    import rlpipe.envs  # noqa: F401  (registers rlpipe/* env ids)

    kwargs = dict(request.env_kwargs, render_mode="rgb_array")
    try:
        env = gymnasium.make(request.env_id, width=request.width, height=request.height, **kwargs)
    except TypeError:  # an env that does not take a frame size renders at its own
        env = gymnasium.make(request.env_id, **kwargs)
    quality = getattr(getattr(getattr(env.unwrapped, "model", None), "vis", None), "quality", None)
    if quality is not None:  # a MuJoCo env; the renderer reads these when it creates its context
        quality.offsamples = OFFSCREEN_SAMPLES
        quality.shadowsize = SHADOW_SIZE
    return env


def _child(request: VideoRequest, result_file: Path) -> int:
    """Record the video; write what came out (or the error) to ``result_file``; return the exit code."""
    import numpy as np
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    model_dir = Path(request.model_dir)
    parent = os.getppid()
    # First a frame: whether this backend renders at all, before anything slower is loaded.
    try:
        env = _make_render_env(request)
        venv: Any = DummyVecEnv([lambda: env])
        render = venv.envs[0].render
        venv.seed(request.seed)
        obs = venv.reset()
        frame = np.asarray(render())
        if frame.ndim != 3:
            raise RuntimeError(f"{request.env_id} rendered no RGB image (got shape {frame.shape})")
    except Exception as exc:
        write_json_atomic(result_file, {"error": f"{type(exc).__name__}: {exc}"})
        return EXIT_NO_GL
    import imageio.v2 as imageio
    import torch
    import stable_baselines3

    from rlpipe.algorithms import ALGORITHMS

    torch.set_num_threads(1)
    if request.normalize:
        venv = VecNormalize.load(str(model_dir / VECNORMALIZE_FILE), venv)
        venv.training, venv.norm_reward = False, False  # as in evaluation: frozen statistics, raw rewards
        venv.seed(request.seed)  # the same first state again, now observed through the statistics
        obs = venv.reset()
        frame = render()
    model = getattr(stable_baselines3, ALGORITHMS[request.algorithm].sb3_class).load(
        str(model_dir / MODEL_FILE), device="cpu")
    stride, fps, most_frames = frame_plan(env.metadata.get("render_fps"), request.max_seconds)
    partial = model_dir / PARTIAL_VIDEO
    writer = imageio.get_writer(str(partial), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=16, ffmpeg_log_level="error",
                                output_params=["-movflags", "+faststart"])  # plays before fully downloaded
    frames, step, rewards, running = 0, 0, [], 0.0
    try:
        while True:
            if step % stride == 0:
                # Checked before a frame, not after: an episode that ends exactly at the limit still counts.
                if frames >= most_frames or os.getppid() != parent:
                    break
                if step:
                    frame = render()
                writer.append_data(frame)
                frames += 1
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, done, _info = venv.step(action)
            running += float(reward[0])
            step += 1
            if done[0]:
                rewards.append(running)
                running, step = 0.0, 0
                if len(rewards) >= request.episodes:
                    break
                frame = render()  # the next episode's first frame (the env reset itself)
    finally:
        writer.close()
        venv.close()
    os.replace(partial, model_dir / VIDEO_FILE)
    shape = np.asarray(frame).shape
    _write_filmstrip(model_dir / VIDEO_FILE, frames, model_dir / FILMSTRIP_FILE)
    write_json_atomic(result_file, {"frames": frames, "fps": round(fps, 4), "seconds": round(frames / fps, 3),
                                    "width": int(shape[1]), "height": int(shape[0]),
                                    "episodes": len(rewards) + (1 if step else 0),  # the last one may be cut
                                    "episode_rewards": [round(r, 6) for r in rewards]})
    return 0


def _write_filmstrip(video: Path, frames: int, target: Path) -> None:
    """A few frames of ``video`` spread over its length, side by side (read back: the video decodes)."""
    import imageio.v2 as imageio
    from PIL import Image

    count = min(FILMSTRIP_FRAMES, frames)
    wanted = {round(i * (frames - 1) / max(1, count - 1)) for i in range(count)}
    picked = []
    reader = imageio.get_reader(str(video), format="FFMPEG")
    try:
        for index, frame in enumerate(reader):
            if index in wanted:
                image = Image.fromarray(frame)
                width = max(1, round(image.width * FILMSTRIP_HEIGHT / image.height))
                picked.append(image.resize((width, FILMSTRIP_HEIGHT), Image.Resampling.LANCZOS))
    finally:
        reader.close()
    if not picked:
        raise RuntimeError(f"{video.name} decodes to no frames")
    strip = Image.new("RGB", (sum(p.width for p in picked) + FILMSTRIP_GAP * (len(picked) - 1), FILMSTRIP_HEIGHT),
                      "white")
    x = 0
    for image in picked:
        strip.paste(image, (x, 0))
        x += image.width + FILMSTRIP_GAP
    partial = target.with_name(PARTIAL_FILMSTRIP)
    strip.save(partial, optimize=True)
    os.replace(partial, target)


def main(argv: list[str] | None = None) -> int:
    """The child: ``python -m rlpipe.trainer.video REQUEST.json RESULT.json``."""
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer decides when to stop recording
    request = VideoRequest(**json.loads(Path(args[0]).read_text()))
    result_file = Path(args[1])
    try:
        return _child(request, result_file)
    except Exception as exc:
        write_json_atomic(result_file, {"error": f"{type(exc).__name__}: {exc}"})
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
