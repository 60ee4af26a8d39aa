"""The execution input: the default pipeline, a pipeline in S3 or inline, or a run to resume."""

from __future__ import annotations

import difflib
from typing import Any

from rlpipe import yamlsafe
from rlpipe.cloud import naming
from rlpipe.cloud.steps.context import Context, InvalidInput
from rlpipe.cloud.store import CONFIGS_PREFIX, is_missing, parse_s3_uri
from rlpipe.config import ConfigError, PipelineConfig, parse_pipeline

INPUT_FIELDS = ("pipeline_s3_uri", "pipeline", "resume_run_id")
_INPUT_HELP = ('expected {} (the default pipeline), {"pipeline_s3_uri": "s3://<bucket>/configs/..."}, '
               '{"pipeline": {...}} or {"resume_run_id": "..."}')


def _unknown_field_message(key: str) -> str:
    close = difflib.get_close_matches(key, INPUT_FIELDS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown input field '{key}'{hint}; {_INPUT_HELP}"


def _read_pipeline_object(ctx: Context, key: str, field: str) -> Any:
    uri = ctx.store.uri(key)
    try:
        # At most one byte more than a pipeline may have: a huge object is refused without loading it.
        body = ctx.store.s3.get_object(Bucket=ctx.store.bucket, Key=key)["Body"].read(yamlsafe.MAX_BYTES + 1)
    except Exception as err:
        if is_missing(err):
            raise InvalidInput(f"{field}: no such object {uri}") from None
        raise
    try:
        return yamlsafe.loads(body)  # JSON or YAML, with the same bounds as a local pipeline file
    except yamlsafe.InputError as err:
        raise InvalidInput(f"{field}: {uri}: {err}") from None


def _validate(raw: Any, source: str, field: str) -> PipelineConfig:
    try:
        return parse_pipeline(raw, base_dir=None, source=source)
    except ConfigError as err:
        raise InvalidInput(f"{field}: {err}") from None


def read_input(ctx: Context, given: Any) -> tuple[str, PipelineConfig | None, str | None]:
    """Check the execution input. Returns (source, pipeline, resume_run_id); exactly one of the last two."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise InvalidInput(f"execution input must be a JSON object; {_INPUT_HELP}")
    unknown = [k for k in given if k not in INPUT_FIELDS]
    if unknown:
        raise InvalidInput(_unknown_field_message(unknown[0]))
    if len(given) > 1:
        raise InvalidInput(f"give at most one of {', '.join(INPUT_FIELDS)} (got {', '.join(given)})")
    bucket = ctx.settings.bucket
    if not given:
        if not ctx.default_pipeline_key:
            raise InvalidInput("no default pipeline is configured for this stack; " + _INPUT_HELP)
        source = ctx.store.uri(ctx.default_pipeline_key)
        raw = _read_pipeline_object(ctx, ctx.default_pipeline_key, "default pipeline")
        return source, _validate(raw, source, "default pipeline"), None
    field, value = next(iter(given.items()))
    if field == "pipeline_s3_uri":
        if not isinstance(value, str):
            raise InvalidInput("pipeline_s3_uri: expected a string s3://<bucket>/configs/...")
        try:
            uri_bucket, key = parse_s3_uri(value)
        except ValueError as err:
            raise InvalidInput(f"pipeline_s3_uri: {err}") from None
        if uri_bucket != bucket:
            raise InvalidInput(f"pipeline_s3_uri: must be in this stack's bucket s3://{bucket}/ "
                               f"(got bucket '{uri_bucket}'); upload it with `rlpipe start`")
        if not key.startswith(CONFIGS_PREFIX) and key != ctx.default_pipeline_key:
            raise InvalidInput(f"pipeline_s3_uri: must be under s3://{bucket}/{CONFIGS_PREFIX} (got {value})")
        raw = _read_pipeline_object(ctx, key, field)
        return value, _validate(raw, value, field), None
    if field == "pipeline":
        if not isinstance(value, dict):
            raise InvalidInput("pipeline: expected an object with name, defaults, sessions")
        return "inline", _validate(value, "inline pipeline", field), None
    if not isinstance(value, str) or not naming.is_valid_run_id(value):
        raise InvalidInput(f"resume_run_id: expected a run id such as 'robot-curriculum-20250101-120000-"
                           f"abc123' (got {value!r})")
    return f"resume of {value}", None, value
