#!/usr/bin/env python3
"""The CDK app: ``cdk synth`` / ``cdk deploy -c alert_email=you@example.com`` (see docs/deploy.md).

Settings are read here, once, from CDK context and handed to the stack as typed values. ``python app.py`` and
the CDK CLI synthesize the same template: cdk.json's context (feature flags, defaults) is loaded as the app's
base context, and values given by the CLI (cdk.json, ``-c``) take precedence.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks

from stacks.pipeline_stack import PipelineStack
from stacks.settings import AppSettings, cdk_json_context


def build_app(context: dict[str, Any] | None = None, outdir: str | None = None) -> tuple[App, PipelineStack]:
    """The app with its one stack and cdk-nag's AwsSolutions checks; ``context`` overrides cdk.json's."""
    app = App(context={**cdk_json_context(), **(context or {})}, outdir=outdir)
    settings = AppSettings.from_context(app.node.try_get_context)
    stack = PipelineStack(app, settings.stack_name, settings=settings)
    # Every synth runs the checks: an unacknowledged finding fails synth with the report.
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack


if __name__ == "__main__":
    build_app()[0].synth()
