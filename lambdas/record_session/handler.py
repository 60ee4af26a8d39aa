"""Lambda: Record a finished training job in the run state and hand its bundle on.

Thin on purpose: the logic is ``rlpipe.cloud.steps.record_session``, tested without AWS.
"""

from rlpipe.cloud import steps
from rlpipe.cloud.lambda_entry import powertools_handler

handler = powertools_handler(steps.record_session)
