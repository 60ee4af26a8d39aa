"""The CDK app's constructs, one module per concern; ``pipeline_stack`` only wires them."""
