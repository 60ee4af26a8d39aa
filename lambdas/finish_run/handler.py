"""Lambda: After the last session: mark the run succeeded, release pools, write the report.

Thin on purpose: the logic is ``rlpipe.cloud.steps.finish_run``, tested without AWS.
"""

from rlpipe.cloud import steps
from rlpipe.cloud.lambda_entry import powertools_handler

handler = powertools_handler(steps.finish_run)
