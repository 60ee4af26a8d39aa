"""Lambda: EventBridge target for FAILED / TIMED_OUT / ABORTED executions: stop, release, report, alert.

Thin on purpose: the logic is ``rlpipe.cloud.steps.cleanup_execution``, tested without AWS.
"""

from rlpipe.cloud import steps
from rlpipe.cloud.lambda_entry import powertools_handler

handler = powertools_handler(steps.cleanup_execution)
