"""Lambda: the state machine's failure path: stop the job, release pools, partial report, alert.

Thin on purpose: the logic is ``rlpipe.cloud.steps.fail_run``, tested without AWS.
"""

from rlpipe.cloud import steps
from rlpipe.cloud.lambda_entry import powertools_handler

handler = powertools_handler(steps.fail_run)
