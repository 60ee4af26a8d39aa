"""Lambda: A training job ended (EventBridge) or reconciliation is due (schedule): complete waiting tasks.

Thin on purpose: the logic is ``rlpipe.cloud.steps.handle_job_event``, tested without AWS.
"""

from rlpipe.cloud import steps
from rlpipe.cloud.lambda_entry import powertools_handler

handler = powertools_handler(steps.handle_job_event)
