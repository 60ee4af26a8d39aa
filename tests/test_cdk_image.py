"""Training image construct: the image asset, its ECR repository and copy, and the SageMaker execution role."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match, Template

from stacks.settings import cdk_json_context
from stacks.training_image import BUILD_ARGS, KEEP_IMAGES, TrainingImage

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "training_image" / "Dockerfile"
SUBNET = "subnet-0123456789abcdef0"
SECURITY_GROUP = "sg-0123456789abcdef0"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


class Synth:
    """One synthesized test stack: its template, asset manifest and the construct."""

    def __init__(self, **kwargs: Any) -> None:
        app = App(context=cdk_json_context())
        stack = Stack(app, "ImageTest")
        key = kms.Key.from_key_arn(stack, "Key", KEY_ARN) if kwargs.pop("kms", False) else None
        bucket = s3.Bucket(stack, "Bucket", encryption_key=key)
        self.image = TrainingImage(stack, "TrainingImage", bucket=bucket, job_prefix="rlpipe", **kwargs)
        self.template = Template.from_stack(stack)
        assembly = app.synth()
        self.directory = Path(assembly.directory)
        self.assets = json.loads((self.directory / f"{stack.artifact_id}.assets.json").read_text())
        self.stack = stack
        self.bucket_id = stack.get_logical_id(bucket.node.default_child)

    def logical_id(self, construct: Any) -> str:
        return self.stack.get_logical_id(construct.node.default_child)

    def role_statements(self) -> list[dict[str, Any]]:
        """The execution role's policy statements."""
        role_id = self.logical_id(self.image.role)
        statements = []
        for policy in self.template.find_resources("AWS::IAM::Policy").values():
            if {"Ref": role_id} in policy["Properties"]["Roles"]:
                statements += policy["Properties"]["PolicyDocument"]["Statement"]
        return statements


@pytest.fixture(scope="module")
def synth() -> Synth:
    return Synth()


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else action


def test_image_asset_is_amd64_cpu_by_default(synth: Synth) -> None:
    (image,) = synth.assets["dockerImages"].values()
    source = image["source"]
    assert source["platform"] == "linux/amd64"
    assert source["dockerFile"] == "training_image/Dockerfile"
    assert source["dockerBuildArgs"] == BUILD_ARGS["cpu"]
    assert source["dockerBuildArgs"]["BASE"] == "python:3.11-slim"


def test_image_context_holds_only_what_the_build_needs(synth: Synth) -> None:
    (image,) = synth.assets["dockerImages"].values()
    staged = synth.directory / image["source"]["directory"]
    top = {p.name for p in staged.iterdir()}
    assert top <= {"pyproject.toml", "rlpipe", "training_image", ".dockerignore"}
    assert {"pyproject.toml", "rlpipe", "training_image"} <= top
    assert not list(staged.rglob("__pycache__"))


def test_cuda_build_arg_switches_the_base() -> None:
    (image,) = Synth(base="cuda").assets["dockerImages"].values()
    assert image["source"]["dockerBuildArgs"] == BUILD_ARGS["cuda"]
    assert image["source"]["dockerBuildArgs"]["BASE"].startswith("nvidia/cuda:")


def test_repository_scans_on_push_and_expires_old_images(synth: Synth) -> None:
    synth.template.has_resource_properties("AWS::ECR::Repository", {
        "ImageScanningConfiguration": {"ScanOnPush": True},
        "LifecyclePolicy": {"LifecyclePolicyText": Match.serialized_json({"rules": [Match.object_like({
            "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": KEEP_IMAGES},
            "action": {"type": "expire"}})]})},
    })


def test_image_is_copied_into_the_repository_under_its_content_hash(synth: Synth) -> None:
    (copy,) = synth.template.find_resources("Custom::CDKECRDeployment").values()
    (image,) = synth.assets["dockerImages"].values()
    tag = image["destinations"][next(iter(image["destinations"]))]["imageTag"]
    assert synth.image.image_tag == tag
    dest = copy["Properties"]["DestImage"]["Fn::Join"][1]
    assert {"Ref": synth.logical_id(synth.image.repository)} in dest
    assert dest[-1] == f":{tag}"
    assert tag in json.dumps(copy["Properties"]["SrcImage"])
    resolved_uri = synth.stack.resolve(synth.image.image_uri)
    assert resolved_uri["Fn::Join"][1][-1] == f":{tag}"


def test_copy_role_is_scoped_to_the_two_repositories(synth: Synth) -> None:
    copy_role = [rid for rid, r in synth.template.find_resources("AWS::IAM::Role").items()
                 if "Copies the rlpipe training image" in r["Properties"].get("Description", "")]
    assert len(copy_role) == 1
    statements = [s for p in synth.template.find_resources("AWS::IAM::Policy").values()
                  if {"Ref": copy_role[0]} in p["Properties"]["Roles"]
                  for s in p["Properties"]["PolicyDocument"]["Statement"]]
    # The construct's own defaults (ecr:* actions and s3:GetObject on every resource) are not attached.
    assert not any("s3:GetObject" in _actions(s) for s in statements)
    wildcard = [s for s in statements if s["Resource"] == "*"]
    assert [_actions(s) for s in wildcard] == [["ecr:GetAuthorizationToken"]]
    push = [s for s in statements if "ecr:PutImage" in _actions(s)]
    assert [s["Resource"] for s in push] == [{"Fn::GetAtt": [synth.logical_id(synth.image.repository), "Arn"]}]
    assert all(not r.get("Properties", {}).get("ManagedPolicyArns")
               for r in synth.template.find_resources("AWS::IAM::Role").values())


def test_execution_role_is_assumed_by_sagemaker(synth: Synth) -> None:
    synth.template.has_resource_properties("AWS::IAM::Role", {
        "AssumeRolePolicyDocument": {"Statement": [Match.object_like({
            "Action": "sts:AssumeRole", "Principal": {"Service": "sagemaker.amazonaws.com"}})]},
    })


def _object_arns(synth: Synth, *patterns: str) -> list[dict[str, Any]]:
    return [{"Fn::Join": ["", [{"Fn::GetAtt": [synth.bucket_id, "Arn"]}, f"/{p}"]]} for p in patterns]


def _patterns(resource: Any) -> list[str]:
    return [r["Fn::Join"][1][1].lstrip("/") for r in (resource if isinstance(resource, list) else [resource])]


def test_execution_role_s3_access_is_limited_to_what_a_job_touches(synth: Synth) -> None:
    statements = {s.get("Sid"): s for s in synth.role_statements()}
    assert statements["ReadInputs"]["Action"] == "s3:GetObject"
    assert sorted(_patterns(statements["ReadInputs"]["Resource"])) == sorted(
        ["runs/*/sessions/*/config/*", "runs/*/output/*", "checkpoints/*"])
    assert sorted(_actions(statements["WriteOutputs"])) == ["s3:AbortMultipartUpload", "s3:PutObject"]
    assert sorted(_patterns(statements["WriteOutputs"]["Resource"])) == sorted(
        ["runs/*/output/*", "runs/*/tensorboard/*", "checkpoints/*"])
    assert statements["RotateCheckpoints"]["Resource"] == _object_arns(synth, "checkpoints/*")[0]
    assert sorted(statements["ListOwnPrefixes"]["Condition"]["StringLike"]["s3:prefix"]) == sorted(
        ["runs/*/sessions/*/config/*", "runs/*/output/*", "checkpoints/*"])
    for s in synth.role_statements():
        assert not any(a.endswith(":*") or a == "*" for a in _actions(s)), s

    # The keys the request builder really uses fall inside; the run's own documents and configs/ do not.
    from fnmatch import fnmatchcase

    from rlpipe.cloud.store import RunKeys

    keys = RunKeys("p-20250101-120000-abcdef")
    job = "rlpipe-1234abcd-001-hold-2"
    reads, writes = _patterns(statements["ReadInputs"]["Resource"]), _patterns(statements["WriteOutputs"]["Resource"])
    lists = statements["ListOwnPrefixes"]["Condition"]["StringLike"]["s3:prefix"]

    def allowed(key: str, patterns: list[str]) -> bool:
        return any(fnmatchcase(key, p) for p in patterns)  # IAM's * also crosses "/"

    for key in (keys.session_file(1, "hold"), f"{keys.output}{job}/output/model.tar.gz", keys.metrics("hold")):
        assert allowed(key, reads), key
    for prefix in (keys.config_channel(1, "hold"), keys.checkpoints("hold"), f"{keys.output}{job}/output/model.tar.gz"):
        assert allowed(prefix, lists), prefix
    for key in (f"{keys.output}{job}/output/model.tar.gz", keys.tensorboard("hold") + "events.out",
                keys.checkpoints("hold") + "model_256_steps.zip"):
        assert allowed(key, writes), key
    for key in (keys.state, keys.plan, keys.pipeline, keys.attempts, keys.owner, keys.report("html"),
                "configs/default/pipeline.json", "executions/e.json"):
        assert not allowed(key, reads) and not allowed(key, writes), key


def test_execution_role_pulls_only_the_training_repository(synth: Synth) -> None:
    statements = synth.role_statements()
    pull = [s for s in statements if "ecr:BatchGetImage" in _actions(s)]
    assert [s["Resource"] for s in pull] == [{"Fn::GetAtt": [synth.logical_id(synth.image.repository), "Arn"]}]
    assert not any("ecr:PutImage" in _actions(s) for s in statements)


def test_execution_role_wildcards_only_where_no_resource_scope_exists(synth: Synth) -> None:
    for s in synth.role_statements():
        if s["Resource"] == "*":
            assert _actions(s) in (["ecr:GetAuthorizationToken"], ["cloudwatch:PutMetricData"]), s
            if _actions(s) == ["cloudwatch:PutMetricData"]:
                assert s["Condition"] == {"StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/TrainingJobs"}}


def test_execution_role_logs_to_the_training_log_group(synth: Synth) -> None:
    statements = {s.get("Sid"): s for s in synth.role_statements()}
    streams = json.dumps(synth.stack.resolve(statements["TrainingLogStreams"]["Resource"]))
    assert "log-group:/aws/sagemaker/TrainingJobs:log-stream:rlpipe-????????-???-*" in streams
    assert sorted(_actions(statements["TrainingLogStreams"])) == ["logs:CreateLogStream", "logs:PutLogEvents"]


def test_vpc_mode_scopes_network_interfaces_to_given_subnets(synth: Synth) -> None:
    assert "DescribeNetwork" not in {s.get("Sid") for s in synth.role_statements()}
    statements = {s.get("Sid"): s for s in Synth(vpc_subnet_ids=[SUBNET],
                                                  vpc_security_group_ids=[SECURITY_GROUP]).role_statements()}
    create = json.dumps(statements["CreateInterfaces"]["Resource"])
    assert f"subnet/{SUBNET}" in create and f"security-group/{SECURITY_GROUP}" in create
    assert "ec2:DeleteNetworkInterface" in _actions(statements["ManageInterfaces"])


def test_kms_bucket_key_is_granted_to_the_execution_role() -> None:
    statements = Synth(kms=True).role_statements()
    encrypt = [s for s in statements if "kms:Decrypt" in _actions(s)]
    assert encrypt and all(s["Resource"] == KEY_ARN for s in encrypt)
    (grant,) = [s for s in statements if s.get("Sid") == "VolumeKeyGrants"]
    assert grant["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}


# The Dockerfile itself is built only at deploy (no Docker here): check the parts the contract depends on.

def _dockerfile() -> str:
    return DOCKERFILE.read_text()


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_dockerfile_entrypoint_is_exec_form_trainer() -> None:
    entrypoints = re.findall(r"^ENTRYPOINT\s+(.+)$", _dockerfile(), flags=re.M)
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == ["rlpipe-train"]
    scripts = _pyproject()["project"]["scripts"]
    assert scripts["rlpipe-train"] == "rlpipe.trainer.entrypoint:main"


def test_trainer_entrypoint_accepts_sagemakers_train_argument() -> None:
    from rlpipe.trainer.entrypoint import main

    with pytest.raises(SystemExit) as exit_info:  # `docker run IMAGE train --help`
        main(["train", "--help"])
    assert exit_info.value.code == 0


def test_dockerfile_base_torch_and_rendering() -> None:
    text = _dockerfile()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, flags=re.M)
    assert "FROM ${BASE}" in text
    assert "libegl1" in text and "libegl-mesa0" in text and "libosmesa6" in text
    # Unset, so the video process falls back from EGL to OSMesa (a set MUJOCO_GL is the only backend tried).
    assert not re.search(r"^\s*(ENV\s+)?MUJOCO_GL=", text, flags=re.M)
    pins = _pyproject()["project"]["optional-dependencies"]["train"]
    (torch_pin,) = [p for p in pins if p.replace(" ", "").startswith("torch==")]
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in text
    # torch is installed from its index before the package, so `.[train]` finds it satisfied.
    assert text.index('"torch==${TORCH_VERSION}"') < text.index('pip install ".[train,jax]"')


def test_image_has_the_jax_backend_cpu_by_default_and_cuda_in_the_cuda_build() -> None:
    text = _dockerfile()
    assert re.search(r"^ARG JAX_CUDA=$", text, flags=re.M)  # CPU wheels unless the build asks for CUDA
    assert 'pip install "jax[${JAX_CUDA}]==' in text and "import rlpipe.trainer.entrypoint, mujoco, torch, sbx" in text
    assert "JAX_CUDA" not in BUILD_ARGS["cpu"] and BUILD_ARGS["cuda"]["JAX_CUDA"] == "cuda12"
    jax = _pyproject()["project"]["optional-dependencies"]["jax"]
    assert any(d.startswith("sbx-rl") for d in jax) and any(d.startswith("jax") for d in jax)
    # The Lambdas validate sbx sessions from plain tables; their layers stay without JAX.
    for requirements in (Path(__file__).resolve().parent.parent / "lambdas" / "layers").glob("*/requirements.txt"):
        assert not re.search(r"(?im)^\s*(jax|jaxlib|sbx|flax)", requirements.read_text()), requirements


def test_sagemaker_sdk_stays_out_of_the_image() -> None:
    train = _pyproject()["project"]["optional-dependencies"]["train"]
    assert not any(dep.lower().startswith("sagemaker") for dep in train)
    assert "sagemaker" not in re.sub(r"(?m)^#.*$", "", _dockerfile()).replace("/aws/sagemaker", "").lower()


def test_copy_logs_go_to_a_group_with_retention(synth: Synth) -> None:
    groups = synth.template.find_resources("AWS::Logs::LogGroup")
    (group_id,) = [gid for gid, g in groups.items() if "CDKECRDeployment" in json.dumps(g)]
    assert groups[group_id]["Properties"]["RetentionInDays"] == 90
    synth.template.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                           "Resource": {"Fn::GetAtt": [group_id, "Arn"]}})])}})
