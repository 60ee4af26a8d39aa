"""The pipeline config: YAML in, validated and fully resolved sessions out.

``defaults`` are deep-merged into every session (session keys win); a session may pull its settings from a
separate YAML with ``config: sessions/x.yaml`` (relative to the pipeline file). Every problem found is
reported at once, each naming the session, the field path and what would be valid.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from rlpipe import hyperparameters as hp_specs
from rlpipe import yamlsafe
from rlpipe.algorithms import AlgorithmInfo, algorithm_info, describe_backends, offered
from rlpipe.contract import METRIC_NAMES

# Session names become parts of SageMaker job names ([a-zA-Z0-9](-*[a-zA-Z0-9])*, <= 63 chars) together with
# a run id and an attempt number; session and pipeline names become parts of S3 keys: keep them short and plain.
NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$"
SESSION_NAME_MAX = 24
PIPELINE_NAME_MAX = 40
# SageMaker's maximum KeepAlivePeriodInSeconds: 21600 (6 h) in botocore's service model (sagemaker 2017-07-24,
# botocore 1.44.8: ResourceConfig and ResourceConfigForUpdate, max 21600) and in the current API reference
# (API_ResourceConfigForUpdate: "Maximum value of 21600"); older copies of that page and the warm-pool guide
# said 3600. Keeping a pool longer only bills more idle time: the plan keeps one only for a session that reuses it.
MAX_KEEP_ALIVE_SECONDS = 21_600
MAX_RUNTIME_LIMIT = 28 * 24 * 3600  # SageMaker's MaxRuntimeInSeconds ceiling
MAX_TIMESTEPS = hp_specs.MAX_STEPS  # exact as a JSON double (Step Functions payloads), far beyond 28 days


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class WarmPool(_Strict):
    """SageMaker managed warm pool between consecutive sessions."""

    enabled: bool = True
    keep_alive_seconds: int = Field(1800, ge=0, le=MAX_KEEP_ALIVE_SECONDS)


class Compute(_Strict):
    """Where a session runs on AWS. Validated locally too, so a config fails before it costs anything."""

    instance_type: str = Field("ml.c6i.2xlarge", pattern=r"^ml\.[a-z0-9-]+\.[a-z0-9]+$")
    # One training process per session: several instances would train the same session side by side.
    instance_count: int = Field(1, ge=1, le=1, description="1: rlpipe sessions are single-process")
    volume_size_gb: int = Field(30, ge=1, le=16384)
    max_runtime_seconds: int = Field(86400, ge=1, le=MAX_RUNTIME_LIMIT)
    warm_pool: WarmPool = WarmPool()
    # Declared after warm_pool and max_runtime_seconds so their validators can see both.
    spot: bool = False
    max_wait_seconds: int | None = Field(None, ge=1, le=MAX_RUNTIME_LIMIT)

    @field_validator("spot")
    @classmethod
    def _no_spot_with_pool(cls, spot: bool, info: ValidationInfo) -> bool:
        pool = info.data.get("warm_pool")
        if spot and pool is not None and pool.enabled:
            raise ValueError("spot cannot be combined with a warm pool (SageMaker rejects it): "
                             "set compute.warm_pool.enabled: false or compute.spot: false")
        return spot

    @field_validator("max_wait_seconds")
    @classmethod
    def _wait_covers_runtime(cls, wait: int | None, info: ValidationInfo) -> int | None:
        runtime = info.data.get("max_runtime_seconds")
        if info.data.get("spot") and runtime is not None and (wait is None or wait < runtime):
            raise ValueError(f"spot needs max_wait_seconds >= max_runtime_seconds ({runtime}); got {wait}")
        if wait is not None and info.data.get("spot") is False:
            raise ValueError("max_wait_seconds applies only with spot: true")
        return wait


class EvalVideo(_Strict):
    """A video of the session's final policy, recorded after its final evaluation (``model/video.mp4``)."""

    enabled: bool = True
    episodes: int = Field(1, ge=1, le=100, description="episodes recorded one after another")
    max_seconds: float = Field(20.0, gt=0, le=600, description="the video is cut at this length (played in real "
                               "time: the env's frame rate, thinned to at most 30 fps)")
    # H.264 encodes whole 16-pixel macroblocks; other sizes would be rescaled by the encoder.
    width: int = Field(480, ge=16, le=1920, multiple_of=16)
    height: int = Field(480, ge=16, le=1920, multiple_of=16)


class EvalSettings(_Strict):
    """Periodic evaluation on a separate env with the frozen normalisation statistics."""

    every_steps: int = Field(10000, gt=0, le=MAX_TIMESTEPS)
    episodes: int = Field(5, gt=0, le=1000)
    background: bool | None = Field(None, description="evaluate in a second process while training goes on; "
                                    "default: when a core is spare and the session evaluates at least twice "
                                    "before its end")
    video: EvalVideo = EvalVideo()


class CheckpointSettings(_Strict):
    """Periodic checkpoints; a restarted session resumes from the newest valid one."""

    every_steps: int = Field(10000, gt=0, le=MAX_TIMESTEPS)
    keep: int = Field(2, ge=1, le=100)


CarryOrReset = Literal["carry", "reset"]


class Handoff(_Strict):
    """What a warm-started session takes over from the previous session's bundle (the policy always), and
    which of its own checkpoints a session hands over (``checkpoint``)."""

    optimizer: CarryOrReset = "carry"
    vecnormalize: CarryOrReset = "carry"
    replay_buffer: CarryOrReset = "reset"
    checkpoint: Literal["last", "best"] = Field("last", description="what this session's bundle holds (what the "
                                                "next session takes over): the last step, or the checkpoint of "
                                                "its best evaluation")


# Gate metrics. ``stop_when`` reads the values each evaluation prints (the metric line, contract.METRIC_NAMES);
# ``require`` reads the session's outcome when it ends: its final and best evaluation rewards, or any of the
# evaluation metrics at the last evaluation.
EVAL_METRICS = tuple(n for n in METRIC_NAMES if n not in ("fps", "timesteps", "global_timesteps"))
OUTCOME_METRICS = ("final_eval_reward", "best_eval_reward")
STOP_METRICS = EVAL_METRICS
REQUIRE_METRICS = OUTCOME_METRICS + tuple(n for n in EVAL_METRICS if n not in OUTCOME_METRICS)


def _metric_in(valid: tuple[str, ...], metric: str) -> str:
    if metric not in valid:
        close = difflib.get_close_matches(metric, list(valid), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(f"unknown metric '{metric}'; {hint}valid: {', '.join(valid)}")
    return metric


class StopWhen(_Strict):
    """End the session early at the first evaluation where ``metric >= at_least`` has held for ``for_evals``
    evaluations in a row; a checkpoint is written at that step and the session counts as completed."""

    metric: str = Field(description="one of " + ", ".join(STOP_METRICS))
    at_least: float
    for_evals: int = Field(1, ge=1, le=1000)

    @field_validator("metric")
    @classmethod
    def _known(cls, metric: str) -> str:
        return _metric_in(STOP_METRICS, metric)


class Require(_Strict):
    """Checked when the session ends: below ``at_least`` the lineage fails here (a named outcome, not a crash)
    and no later session runs."""

    metric: str = Field(description="one of " + ", ".join(REQUIRE_METRICS))
    at_least: float

    @field_validator("metric")
    @classmethod
    def _known(cls, metric: str) -> str:
        return _metric_in(REQUIRE_METRICS, metric)


class SessionSettings(_Strict):
    """Settings that ``defaults`` may give to every session."""

    backend: Literal["sb3", "sbx"] = Field("sb3", description="sb3: stable-baselines3 (torch); sbx: SBX (JAX), "
                                          "needs the jax extra. Algorithms: " + describe_backends())
    algorithm: Literal["ppo", "sac", "td3", "a2c", "tqc", "crossq"] = Field(
        "ppo", description="offered per backend: " + describe_backends())
    policy: Literal["MlpPolicy"] = "MlpPolicy"
    n_envs: int | None = Field(None, ge=1, le=256, description="default: 4 on-policy, 1 off-policy")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    normalize: bool = Field(True, description="VecNormalize observations and rewards")
    torch_threads: int | None = Field(None, ge=1, le=256, description="default: 1, except off-policy on more "
                                      "than 2 cores: torch's default (256-sample gradient batches gain from more)")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="torch device; MLP policies run fastest on "
                                                   "the CPU, use cuda with a GPU instance and the CUDA image")
    vec_env: Literal["auto", "dummy", "subproc"] = "auto"
    eval: EvalSettings = EvalSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    compute: Compute = Compute()
    stop_when: StopWhen | None = None
    require: Require | None = None
    handoff: Handoff = Handoff()

    @field_validator("algorithm")
    @classmethod
    def _offered_by_backend(cls, algorithm: str, info: ValidationInfo) -> str:
        backend = info.data.get("backend")
        if backend is not None and backend not in offered(algorithm):
            raise ValueError(f"{algorithm} is not offered by backend {backend}; use backend "
                             f"{' or '.join(offered(algorithm))} or another algorithm ({describe_backends()})")
        return algorithm

    @field_validator("hyperparameters")
    @classmethod
    def _known_hyperparameters(cls, hps: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        algorithm, backend = info.data.get("algorithm"), info.data.get("backend")
        if algorithm is None or backend is None:
            return hps
        valid = algorithm_info(algorithm, backend).hyperparameters
        unknown = sorted(set(hps) - valid)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(valid), n=1)
                hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            what = algorithm if backend == "sb3" else f"{algorithm} on backend {backend}"
            raise ValueError(f"unknown for {what}: {', '.join(hints)}; valid: {', '.join(sorted(valid))}")
        return hps

    @field_validator("hyperparameters")
    @classmethod
    def _typed_hyperparameters(cls, hps: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Types and ranges as the backend's constructor takes them; one error per key, at hyperparameters.<key>.
        algorithm, backend = info.data.get("algorithm"), info.data.get("backend")
        return hps if algorithm is None or backend is None else hp_specs.check_all(algorithm, hps, backend)

    @property
    def info(self) -> AlgorithmInfo:
        """Static facts about this session's algorithm on its backend."""
        return algorithm_info(self.algorithm, self.backend)


class SessionConfig(SessionSettings):
    """One fully resolved session."""

    name: str = Field(pattern=NAME_PATTERN, max_length=SESSION_NAME_MAX)
    env: str = Field(min_length=1)
    timesteps: int = Field(gt=0, le=MAX_TIMESTEPS)
    use_previous_checkpoint: bool = False
    n_envs: int = Field(None, ge=1, le=256,  # type: ignore[assignment]  # resolved by _default_n_envs
                        description="default: 4 on-policy, 1 off-policy")

    @field_validator("n_envs", mode="before")
    @classmethod
    def _default_n_envs(cls, n_envs: Any, info: ValidationInfo) -> Any:
        if n_envs is not None:
            return n_envs
        algorithm, backend = info.data.get("algorithm"), info.data.get("backend")
        # An invalid algorithm is reported on its own; 1 only keeps this field from adding a second problem.
        return algorithm_info(algorithm, backend).default_n_envs if backend in offered(str(algorithm)) else 1

    @field_validator("timesteps")
    @classmethod
    def _whole_vector_steps(cls, timesteps: int, info: ValidationInfo) -> int:
        # SB3 counts n_envs steps per vector step; a budget that is not a multiple could never be hit exactly.
        n_envs = info.data.get("n_envs")
        if n_envs and timesteps % n_envs:
            nearest = max(n_envs, round(timesteps / n_envs) * n_envs)
            raise ValueError(f"must be a multiple of n_envs ({n_envs}), e.g. {nearest}")
        return timesteps
        before_end = (timesteps - 1) // ev.every_steps  # evaluations before the budget's end
        if before_end == 0:
            raise ValueError(f"the session never evaluates before its end (eval.every_steps {ev.every_steps} >= "
                             f"timesteps {timesteps}): lower eval.every_steps or drop stop_when")
        if stop.for_evals > before_end:
            raise ValueError(f"for_evals {stop.for_evals} can never hold before the end: the session evaluates "
                             f"{before_end} time(s) before its budget (every {ev.every_steps} of {timesteps} "
                             "steps)")
        return stop


MAX_SEEDS = 100


class RunSettings(_Strict):
    """Top-level settings of a run: its lineages (one whole curriculum per seed) and its limits."""

    seeds: list[int] | None = Field(None, min_length=1, max_length=MAX_SEEDS,
                                    description="one lineage per seed; default: [defaults.seed]")
    parallel: int = Field(1, ge=1, le=MAX_SEEDS, description="how many lineages run at once")
    max_cost_usd: float | None = Field(None, gt=0, description="refuse to start when the plan's estimate for "
                                       "all seeds exceeds it")
    fail_fast: bool = Field(False, description="stop the other lineages when one fails")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is None:
            return None
        bad = [s for s in seeds if not 0 <= s <= 2**31 - 1]
        if bad:
            raise ValueError(f"seeds must be integers from 0 to {2**31 - 1}; got {bad[0]}")
        dupes = sorted({s for s in seeds if seeds.count(s) > 1})
        if dupes:
            raise ValueError(f"each seed once; repeated: {', '.join(map(str, dupes))}")
        return seeds


class PipelineConfig(RunSettings):
    """A validated pipeline: its name, its resolved sessions in order and its run settings."""

    name: str = Field(pattern=NAME_PATTERN, max_length=PIPELINE_NAME_MAX)
    sessions: list[SessionConfig] = Field(min_length=1)

    def seed_list(self) -> list[int]:
        """The lineages' seeds: ``seeds``, else the first session's seed (``defaults.seed``)."""
        return list(self.seeds) if self.seeds else [self.sessions[0].seed]

    def lineage(self, seed: int) -> PipelineConfig:
        """The curriculum of one lineage: every session seeded with ``seed``, as a single-seed run."""
        sessions = [s.model_copy(update={"seed": seed}) for s in self.sessions]
        return PipelineConfig(name=self.name, sessions=sessions, seeds=None, parallel=1,
                              max_cost_usd=self.max_cost_usd)

    def resolved(self) -> dict[str, Any]:
        """Plain JSON form with defaults applied and includes inlined: what runs and what is uploaded."""
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """Stable hash of the resolved config; resume refuses a config that changed."""
        blob = json.dumps(self.resolved(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Problem:
    """One config problem: where (session, field) and what is wrong or valid."""

    field: str
    message: str
    session: str | None = None

    def __str__(self) -> str:
        where = f"session '{self.session}': " if self.session else ""
        return f"{where}{self.field}: {self.message}"


class ConfigError(ValueError):
    """A config with one or more problems. ``problems`` lists each; ``str()`` gives one per line."""

    def __init__(self, problems: list[Problem], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))


_TOP_KEYS = {"name", "defaults", "sessions"} | set(RunSettings.model_fields)
# A session's own fields (not settings ``defaults`` may give), and ``config``: the include of its settings.
_SESSION_ONLY_KEYS = (set(SessionConfig.model_fields) - set(SessionSettings.model_fields)) | {"config"}


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _has_path(raw: Any, path: tuple[Any, ...]) -> bool:
    node = raw
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def _valid_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``path`` (the parent of an unknown key) within ``model``."""
    for part in path:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a wrong value can be a 20,000-item list."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxlong = 3, 8, 8, limit, limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _problems_from(err: ValidationError, model: type[BaseModel], session: str | None,
                   prefix: tuple[Any, ...] = ()) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"])
        field = ".".join(str(p) for p in prefix + loc) or "(session)"
        if e["type"] == "extra_forbidden":
            valid = _valid_keys(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            msg = f"unknown key{hint} valid keys here: {', '.join(valid)}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] not in ("missing",) and "input" in e and not isinstance(e["input"], dict):
                msg += f" (got {_short_repr(e['input'])})"
        problems.append(Problem(field=field, message=msg, session=session))
    return problems


def _load_yaml(path: Path, what: str) -> Any:
    try:
        return yamlsafe.load_file(path)
    except yamlsafe.InputError as exc:
        raise ConfigError([Problem(exc.where or what, exc.message)], str(path)) from None


def _load_include(base_dir: Path, include: Any, label: str) -> dict[str, Any] | Problem:
    """A session's ``config:`` file as a mapping, or the problem with it (named after the session)."""
    if not isinstance(include, str) or not include.strip():
        return Problem("config", f"expected a path to a YAML file of session settings (got {include!r})", label)
    try:
        included = yamlsafe.load_file(base_dir / include)
    except yamlsafe.InputError as exc:
        named = exc.where or str(base_dir / include) not in exc.message  # file errors name the path already
        return Problem("config", (f"{include}: " if named else "") + (f"{exc.where}: " if exc.where else "")
                       + exc.message, label)
    if not isinstance(included, dict):
        return Problem("config", f"{include} must hold a mapping of session settings", label)
    return included


def _input_problem(raw: Any) -> Problem | None:
    """Parsed input beyond the loader's bounds (too deep, too large once shared parts are expanded)."""
    try:
        yamlsafe.check_tree(raw)
    except yamlsafe.InputError as exc:
        return Problem(exc.where or "(top level)", exc.message)
    return None


def parse_pipeline(raw: Any, base_dir: Path | None = None, source: str = "config",
                   check_envs: bool = True) -> PipelineConfig:
    """Validate a pipeline given as a dict (parsed YAML/JSON). Raises :class:`ConfigError` listing every problem.

    ``base_dir`` resolves ``config:`` includes; without it (e.g. an inline pipeline on AWS) includes are an error.
    ``check_envs`` also checks env ids and transfer compatibility (needs gymnasium or the shipped catalog).
    """
    if not isinstance(raw, dict):
        raise ConfigError([Problem("(top level)", "expected a mapping with keys name, defaults, sessions")], source)
    too_big = _input_problem(raw)
    if too_big is not None:
        raise ConfigError([too_big], source)
    problems: list[Problem] = []
    for key in sorted(set(raw) - _TOP_KEYS):
        close = difflib.get_close_matches(key, sorted(_TOP_KEYS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        problems.append(Problem(key, f"unknown key; {hint}valid keys: {', '.join(sorted(_TOP_KEYS))}"))
    name = raw.get("name")
    name_err = None
    try:
        PipelineConfig.model_validate({"name": name, "sessions": []})
    except ValidationError as exc:
        name_err = [p for p in _problems_from(exc, PipelineConfig, None) if p.field == "name"]
    problems.extend(name_err or [])
    run_raw = {k: raw[k] for k in RunSettings.model_fields if k in raw}
    run_settings = RunSettings()
    try:
        run_settings = RunSettings.model_validate(run_raw)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, RunSettings, None))
    else:
        n_seeds = len(run_settings.seeds or [0])
        if run_settings.parallel > n_seeds:
            problems.append(Problem("parallel", f"{run_settings.parallel} lineages at once, but there "
                                    f"{'is' if n_seeds == 1 else 'are'} only {n_seeds} seed(s); "
                                    f"set parallel to at most {n_seeds} or list more seeds"))

    defaults = raw.get("defaults") or {}
    failed_in_defaults: set[str] = set()
    if not isinstance(defaults, dict):
        problems.append(Problem("defaults", "expected a mapping of session settings"))
        defaults = {}
    else:
        for key in sorted(set(defaults) & _SESSION_ONLY_KEYS):
            problems.append(Problem(f"defaults.{key}", "belongs in a session, not in defaults"))
        defaults = {k: v for k, v in defaults.items() if k not in _SESSION_ONLY_KEYS}
        try:
            SessionSettings.model_validate(defaults)
        except ValidationError as exc:
            found = _problems_from(exc, SessionSettings, None, ("defaults",))
            problems.extend(found)
            failed_in_defaults = {p.field.removeprefix("defaults.") for p in found}

    raw_sessions = raw.get("sessions")
    if not isinstance(raw_sessions, list) or not raw_sessions:
        problems.append(Problem("sessions", "expected a non-empty list of sessions"))
        raise ConfigError(problems, source)

    sessions: list[SessionConfig] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(raw_sessions):
        label = entry.get("name") if isinstance(entry, dict) and isinstance(entry.get("name"), str) else None
        label = label or f"sessions[{index}]"
        if not isinstance(entry, dict):
            problems.append(Problem(f"sessions[{index}]", "expected a mapping with at least name, env, timesteps"))
            continue
        entry = dict(entry)
        include = entry.pop("config", None)
        if include is not None:
            if base_dir is None:
                problems.append(Problem("config", "includes need a pipeline file; inline the session settings",
                                        label))
                continue
            included = _load_include(base_dir, include, label)
            if isinstance(included, Problem):
                problems.append(included)
                continue
            entry = _deep_merge(included, entry)
        merged = _deep_merge(defaults, entry)
        if label in seen:
            problems.append(Problem("name", f"duplicate session name (also sessions[{seen[label]}]); "
                                            "names must be unique", label))
        seen.setdefault(label, index)
        try:
            sessions.append(SessionConfig.model_validate(merged))
            problems.extend(gate_problems(sessions[-1]))
        except ValidationError as exc:
            for p in _problems_from(exc, SessionConfig, label):
                # Problems in values inherited from defaults were reported once under defaults already.
                if p.field in failed_in_defaults and not _has_path(entry, tuple(p.field.split("."))):
                    continue
                problems.append(p)

    if sessions:
        # Cross-session rules also run when other fields are wrong, over the sessions that did validate,
        # so one round of fixes is enough.
        complete = not problems and len(sessions) == len(raw_sessions)
        partial = PipelineConfig.model_construct(name=name if complete else "", sessions=sessions)
        problems.extend(check_transfers(partial, check_envs=check_envs, positions=_positions(raw_sessions)))
        if complete and not problems:
            return PipelineConfig(name=name, sessions=sessions, **run_settings.model_dump(exclude_unset=True))
    raise ConfigError(problems, source)


def gate_problems(s: SessionConfig) -> list[Problem]:
    """Gates that could never act: ``stop_when`` needs evaluations before the session's budget ends."""
    stop = s.stop_when
    if stop is None:
        return []
    before_end = (s.timesteps - 1) // s.eval.every_steps  # evaluations before the budget's end
    if before_end == 0:
        return [Problem("stop_when", f"the session never evaluates before its end (eval.every_steps "
                        f"{s.eval.every_steps} >= timesteps {s.timesteps}): lower eval.every_steps or drop "
                        "stop_when", s.name)]
    if stop.for_evals > before_end:
        return [Problem("stop_when.for_evals", f"{stop.for_evals} evaluations in a row can never happen before "
                        f"the end: the session evaluates {before_end} time(s) before its budget (every "
                        f"{s.eval.every_steps} of {s.timesteps} steps)", s.name)]
    return []


def _positions(raw_sessions: list[Any]) -> dict[str, int]:
    """Index in the file of each session name (sessions that failed validation leave gaps)."""
    return {e["name"]: i for i, e in enumerate(raw_sessions) if isinstance(e, dict) and isinstance(e.get("name"), str)}


def check_transfers(pipeline: PipelineConfig, check_envs: bool = True,
                    positions: dict[str, int] | None = None) -> list[Problem]:
    """Cross-session rules: env ids exist, and each warm start can load the previous session's state.

    ``positions`` (name -> index in the file) lets this run over a partial list of sessions: a warm start
    is checked only when its previous session in the file is present.
    """
    from rlpipe import envspec

    problems: list[Problem] = []
    signatures: dict[str, dict[str, Any] | None] = {}
    if check_envs:
        for s in pipeline.sessions:
            try:
                sig = envspec.env_signature(s.env, s.env_kwargs)
            except Exception as exc:  # gymnasium.make raised: most often an env_kwargs the env does not take
                problems.append(Problem("env_kwargs", f"{s.env} cannot be built with {s.env_kwargs}: "
                                        f"{type(exc).__name__}: {exc}", s.name))
                continue
            signatures[s.name] = sig
            if sig is None:
                close = envspec.suggest_env_ids(s.env)
                hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else \
                    "see `python -c \"import gymnasium; gymnasium.pprint_registry()\"`"
                problems.append(Problem("env", f"unknown environment id {s.env!r}; {hint}", s.name))
            elif s.info.needs_box_actions and sig["action"]["type"] != "Box":
                problems.append(Problem("algorithm", f"{s.algorithm} needs a continuous (Box) action space; "
                                        f"{s.env} has {envspec.describe(sig['action'])}", s.name))
    index = positions or {s.name: i for i, s in enumerate(pipeline.sessions)}
    by_index = {index[s.name]: s for s in pipeline.sessions if s.name in index}
    for s in pipeline.sessions:
        if not s.use_previous_checkpoint:
            continue
        i = index.get(s.name, -1)
        if i == 0:
            problems.append(Problem("use_previous_checkpoint", "the first session has no previous session to "
                                    "warm-start from; set it to false", s.name))
            continue
        prev = by_index.get(i - 1)
        if prev is None:
            continue
        problems.extend(_transfer_problems(prev, s))
        a, b = signatures.get(prev.name), signatures.get(s.name)
        if a and b:
            for part in ("observation", "action"):
                if a[part] != b[part]:
                    problems.append(Problem("env", f"{part} space of {s.env} ({envspec.describe(b[part])}) differs "
                                            f"from '{prev.name}''s {prev.env} ({envspec.describe(a[part])}); "
                                            "transfer needs equal spaces", s.name))
    return problems


def _transfer_problems(prev: SessionConfig, s: SessionConfig) -> list[Problem]:
    """What keeps session ``s`` from loading ``prev``'s bundle (each would otherwise fail mid-run)."""
    problems: list[Problem] = []

    def problem(field: str, message: str) -> None:
        problems.append(Problem(field, message, s.name))

    if prev.backend != s.backend:
        problem("backend", f"cross-backend warm start refused: '{prev.name}' trains with backend {prev.backend} and "
                f"this session with {s.backend}; their policies and optimizer states are stored differently. "
                f"Use backend {prev.backend} or set use_previous_checkpoint: false")
        return problems
    if prev.algorithm != s.algorithm:
        problem("algorithm", f"cannot warm-start {s.algorithm} from '{prev.name}' trained with {prev.algorithm}: "
                f"policies differ; use {prev.algorithm} or set use_previous_checkpoint: false")
        return problems
    hp, prev_hp = s.hyperparameters, prev.hyperparameters
    if prev_hp.get("policy_kwargs") != hp.get("policy_kwargs"):
        problem("hyperparameters.policy_kwargs", f"must equal '{prev.name}''s ({prev_hp.get('policy_kwargs')!r}) "
                "to load its weights")
    if bool(prev_hp.get("use_sde")) != bool(hp.get("use_sde")):
        problem("hyperparameters.use_sde", f"must equal '{prev.name}''s: gSDE changes the policy's parameters")
    if prev.normalize != s.normalize:
        problem("normalize", f"must equal '{prev.name}''s ({prev.normalize}): the policy was trained on "
                f"{'normalized' if prev.normalize else 'raw'} observations")
    info = s.info
    if not info.off_policy and s.handoff.replay_buffer == "carry":
        problem("handoff.replay_buffer", f"{s.algorithm} is on-policy and has no replay buffer; use reset")
    if info.off_policy and s.handoff.replay_buffer == "carry" and prev.n_envs != s.n_envs:
        problem("handoff.replay_buffer", f"carrying the replay buffer needs n_envs equal to '{prev.name}''s "
                f"({prev.n_envs}); got {s.n_envs}")
    if s.algorithm in ("sac", "tqc", "crossq") and s.handoff.optimizer == "carry":
        learned = [str(x.get("ent_coef", "auto")).startswith("auto") for x in (prev_hp, hp)]
        if learned[0] != learned[1]:
            problem("hyperparameters.ent_coef", f"a learned ('auto') and a fixed entropy coefficient cannot share "
                    f"optimizer state with '{prev.name}'; match ent_coef or set handoff.optimizer: reset")
    return problems


def load_pipeline(path: str | Path, check_envs: bool = True) -> PipelineConfig:
    """Read and validate a pipeline YAML file (includes resolved relative to it)."""
    path = Path(path)
    raw = _load_yaml(path, "(file)")
    return parse_pipeline(raw, base_dir=path.parent, source=str(path), check_envs=check_envs)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the pipeline file format (sessions may also carry ``config``, an include path)."""
    session = SessionConfig.model_json_schema()
    session.setdefault("properties", {})["config"] = {
        "type": "string", "description": "YAML file of session settings, relative to the pipeline file"}
    run = RunSettings.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "rlpipe pipeline",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "sessions"],
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN, "maxLength": PIPELINE_NAME_MAX},
            **run["properties"],
            "defaults": SessionSettings.model_json_schema(),
            "sessions": {"type": "array", "minItems": 1, "items": session},
        },
    }

