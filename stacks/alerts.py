"""Alerts: the SNS topic that emails the team when a run ends or fails."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct


class Alerts(Construct):
    """An SNS topic (SSL only, encrypted with its own customer-managed key) with one email subscription each.

    EventBridge can only deliver to an encrypted topic when the key policy lets ``events.amazonaws.com`` use
    the key (an AWS-managed SNS key cannot be changed, hence a customer-managed one). Publishers inside the
    stack (state machine, Lambdas) use ``topic.grant_publish``, which also grants the key's data-key calls.

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
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowEventBridgeToPublishToTheTopic",
            principals=[iam.ServicePrincipal("events.amazonaws.com")],
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            resources=["*"],  # in a key policy, "*" is this key
        ))
        self.topic = sns.Topic(
            self, "Topic",
            display_name="rlpipe",
            master_key=self.key,
            enforce_ssl=True,
        )
        for email in emails:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))
