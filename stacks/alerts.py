"""Alerts: the SNS topic that emails the team when a run ends or fails."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Aws, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct


class Alerts(Construct):
    """An SNS topic (SSL only, encrypted with its own customer-managed key) with one email subscription each.

    Service publishers need the key policy to let them use the key (an AWS-managed SNS key cannot be changed,
    hence a customer-managed one): CloudWatch, for the stack's alarm on undelivered cleanup events, and
    EventBridge, for rules users add to route more events here (SageMaker job state changes, for example; the
    issue's brief asks the topic to accept them). Both grants hold only for requests made on behalf of this
    account (``aws:SourceAccount``), so no other account's rule or alarm can use the key through the service
    (confused deputy). Publishers inside the stack (state machine, Lambdas) use ``topic.grant_publish``,
    which also grants the key's data-key calls.

    Attributes: ``topic``, ``key``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, emails: Sequence[str],
                 removal_policy: RemovalPolicy = RemovalPolicy.RETAIN) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self, "TopicKey",
            description="Encrypts the rlpipe alert topic",
            enable_key_rotation=True,
            removal_policy=removal_policy,
        )
        for sid, service in (("AllowEventBridgeToPublishToTheTopic", "events.amazonaws.com"),
                             ("AllowCloudWatchAlarmsToPublishToTheTopic", "cloudwatch.amazonaws.com")):
            self.key.add_to_resource_policy(iam.PolicyStatement(
                sid=sid,
                principals=[iam.ServicePrincipal(service)],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],  # in a key policy, "*" is this key
                conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
            ))
        self.topic = sns.Topic(
            self, "Topic",
            display_name="rlpipe",
            master_key=self.key,
            enforce_ssl=True,
        )
        for email in emails:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))
