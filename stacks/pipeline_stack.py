"""The one stack of the app: wires storage, training image, alerts and orchestration together."""

from __future__ import annotations

from typing import Any

from aws_cdk import Aws, CfnOutput, Fn, Stack
from aws_cdk import aws_kms as kms
from constructs import Construct

from rlpipe.cloud.environment import dashboard_environment
from rlpipe.cloud.requests import StackSettings
from stacks.alerts import Alerts
from stacks.dashboard import RunDashboard
from stacks.orchestration import Orchestration
from stacks.settings import AppSettings
from stacks.storage import Storage
from stacks.training_image import TrainingImage


class PipelineStack(Stack):
    """Bucket, training image and SageMaker role, alert topic, and the state machine that runs pipelines.

    Environment-agnostic (no account or region lookups): ``cdk synth`` needs no credentials.
    """

    def __init__(self, scope: Construct, construct_id: str, *, settings: AppSettings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id,
                         description="rlpipe: curricula of RL training sessions on SageMaker with warm pools",
                         **kwargs)
        removal_policy = settings.cdk_removal_policy
        bucket_key = (kms.Key.from_key_arn(self, "BucketKey", settings.kms_key_arn)
                      if settings.kms_key_arn else None)

        self.storage = Storage(self, "Storage", default_pipeline=settings.default_pipeline,
                               removal_policy=removal_policy, encryption_key=bucket_key)
        self.training_image = TrainingImage(
            self, "TrainingImage", bucket=self.storage.bucket, job_prefix=settings.job_prefix,
            base=settings.image_build_arg_base, removal_policy=removal_policy,
            vpc_subnet_ids=settings.vpc_subnet_ids, vpc_security_group_ids=settings.vpc_security_group_ids)
        self.alerts = Alerts(self, "Alerts", emails=settings.alert_emails, removal_policy=removal_policy)
        self.orchestration = Orchestration(
            self, "Orchestration",
            bucket=self.storage.bucket,
            training_role=self.training_image.role,
            image_uri=self.training_image.image_uri,
            topic=self.alerts.topic,
            settings=settings,
            default_pipeline_key=self.storage.default_pipeline_key,
        )
        # No execution can start a job before the image is in the repository and the default pipeline exists.
        self.orchestration.state_machine.node.add_dependency(self.training_image.deployment,
                                                             self.storage.default_pipeline_writer)

        self.dashboard = RunDashboard(self, "Dashboard", state_machine=self.orchestration.state_machine,
                                      functions=self.orchestration.functions,
                                      cleanup_queue=self.orchestration.cleanup_dlq, job_prefix=settings.job_prefix,
                                      plateau_evaluations=settings.plateau_evaluations,
                                      plateau_topic=self.alerts.topic if settings.plateau_notify else None)
        # The run-end e-mail links the dashboard (its URL is made of pseudo parameters: no dependency cycle).
        for fn in self.orchestration.functions.values():
            for key, value in dashboard_environment(self.dashboard.url).items():
                fn.add_environment(key, value)

        machine_arn = self.orchestration.state_machine.state_machine_arn
        CfnOutput(self, "StateMachineArn", value=machine_arn, description="Runs one pipeline per execution")
        CfnOutput(self, "BucketName", value=self.storage.bucket.bucket_name,
                  description="Configs, runs, checkpoints and reports")
        CfnOutput(self, "TopicArn", value=self.alerts.topic.topic_arn, description="Run alerts (email)")
        CfnOutput(self, "DashboardUrl", value=self.dashboard.url,
                  description="CloudWatch dashboard: executions, training metrics per session job, Lambda errors")
        CfnOutput(self, "ImageUri", value=self.training_image.image_uri, description="Training image")
        CfnOutput(self, "TrainingRoleArn", value=self.training_image.role.role_arn,
                  description="SageMaker execution role of the training jobs")
        # Everything a CreateTrainingJob request takes from the stack, as the Lambdas get it: `rlpipe debug-job`
        # builds its request from this, so VPC, KMS key and job prefix are the deployed ones.
        request_settings = StackSettings(
            bucket=self.storage.bucket.bucket_name, role_arn=self.training_image.role.role_arn,
            image_uri=self.training_image.image_uri, job_prefix=settings.job_prefix,
            subnet_ids=settings.vpc_subnet_ids, security_group_ids=settings.vpc_security_group_ids,
            kms_key_arn=settings.kms_key_arn)
        CfnOutput(self, "RequestSettings", value=self.to_json_string(request_settings.document()),
                  description="Settings of every training job request (JSON), read by `rlpipe debug-job`")
        CfnOutput(self, "StartExecutionCommand",
                  value=Fn.join("", ["aws stepfunctions start-execution --region ", Aws.REGION,
                                     " --state-machine-arn ", machine_arn, " --input '{}'"]),
                  description="Runs the default pipeline (uploaded at deploy)")
