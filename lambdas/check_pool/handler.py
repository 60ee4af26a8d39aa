"""Lambda: Poll the previous job's warm pool until it is Available for the next session.

Thin on purpose: the logic is ``rlpipe.cloud.steps.check_pool``, tested without AWS.
"""

from rlpipe.cloud import steps
from rlpipe.cloud.lambda_entry import powertools_handler

handler = powertools_handler(steps.check_pool)
