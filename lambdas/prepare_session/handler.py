"""Lambda: Write the session's session.json and build its CreateTrainingJob request.

Thin on purpose: the logic is ``rlpipe.cloud.steps.prepare_session``, tested without AWS.
"""

from rlpipe.cloud import steps
from rlpipe.cloud.lambda_entry import powertools_handler

handler = powertools_handler(steps.prepare_session)
