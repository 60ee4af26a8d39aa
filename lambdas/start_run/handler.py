"""Lambda: Validate the execution input, plan the pipeline and create (or resume) the run in S3.

Thin on purpose: the logic is ``rlpipe.cloud.steps.start_run``, tested without AWS.
"""

from rlpipe.cloud import steps
from rlpipe.cloud.lambda_entry import powertools_handler

handler = powertools_handler(steps.start_run)
