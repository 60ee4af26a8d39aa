"""The AWS driver: SageMaker requests, the S3 run store and the logic behind the state machine's Lambdas.

Everything here runs in the Lambdas (core dependencies plus boto3 only); the CLI commands in
:mod:`rlpipe.cloud.cli` add typer on top. The CDK constructs that deploy it live in ``stacks/``.
"""
