"""Alerts construct: KMS-encrypted, SSL-only topic that EventBridge may publish to, one email subscription each."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_iam as iam
from aws_cdk.assertions import Match, Template

from stacks.alerts import Alerts
from stacks.settings import cdk_json_context

EMAILS = ("team@example.com", "oncall@example.org")


@pytest.fixture(scope="module")
def synth() -> tuple[Template, Stack, Alerts]:
    stack = Stack(App(context=cdk_json_context()), "AlertsTest")
    alerts = Alerts(stack, "Alerts", emails=EMAILS)
    publisher = iam.Role(stack, "Publisher", assumed_by=iam.ServicePrincipal("states.amazonaws.com"))
    alerts.topic.grant_publish(publisher)
    return Template.from_stack(stack), stack, alerts


def _id(stack: Stack, construct: Any) -> str:
    return stack.get_logical_id(construct.node.default_child)


def test_topic_is_encrypted_with_its_own_rotating_key(synth: tuple[Template, Stack, Alerts]) -> None:
    template, stack, alerts = synth
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    template.has_resource_properties("AWS::SNS::Topic", {
        "KmsMasterKeyId": {"Fn::GetAtt": [_id(stack, alerts.key), "Arn"]}})


@pytest.mark.parametrize("service", ["events.amazonaws.com", "cloudwatch.amazonaws.com"])
def test_key_policy_lets_services_use_the_key_for_this_account_only(synth: tuple[Template, Stack, Alerts],
                                                                   service: str) -> None:
    """EventBridge rules and CloudWatch alarms may publish to the encrypted topic, on behalf of this account
    only (aws:SourceAccount: no confused deputy)."""
    template, _, _ = synth
    template.has_resource_properties("AWS::KMS::Key", {"KeyPolicy": {"Statement": Match.array_with([
        Match.object_like({"Effect": "Allow", "Principal": {"Service": service},
                           "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                           "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}})])}})
    statements = template.to_json()["Resources"]
    for res in statements.values():
        if res["Type"] == "AWS::KMS::Key":
            for st in res["Properties"]["KeyPolicy"]["Statement"]:
                if isinstance(st.get("Principal"), dict) and "Service" in st["Principal"]:
                    assert "Condition" in st, st


def test_topic_requires_ssl(synth: tuple[Template, Stack, Alerts]) -> None:
    template, _, _ = synth
    template.has_resource_properties("AWS::SNS::TopicPolicy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Effect": "Deny", "Action": "sns:Publish",
                           "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])}})


def test_one_email_subscription_per_address(synth: tuple[Template, Stack, Alerts]) -> None:
    template, stack, alerts = synth
    subscriptions = template.find_resources("AWS::SNS::Subscription")
    assert sorted(s["Properties"]["Endpoint"] for s in subscriptions.values()) == sorted(EMAILS)
    for s in subscriptions.values():
        assert s["Properties"]["Protocol"] == "email"
        assert s["Properties"]["TopicArn"] == {"Ref": _id(stack, alerts.topic)}


def test_grant_publish_covers_topic_and_key(synth: tuple[Template, Stack, Alerts]) -> None:
    """Publishers in the stack rely on the topic's own grant reaching the key as well."""
    template, stack, alerts = synth
    template.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Action": "sns:Publish", "Resource": {"Ref": _id(stack, alerts.topic)}}),
        Match.object_like({"Action": Match.array_with(["kms:Decrypt"]),
                           "Resource": {"Fn::GetAtt": [_id(stack, alerts.key), "Arn"]}}),
    ])}})


def test_no_subscriptions_without_emails() -> None:
    stack = Stack(App(context=cdk_json_context()), "NoEmails")
    Alerts(stack, "Alerts", emails=())
    Template.from_stack(stack).resource_count_is("AWS::SNS::Subscription", 0)
