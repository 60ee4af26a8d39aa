"""Lambda: once the running job is past its start, release the previous job's pool if it did not take it.

Thin on purpose: the logic is ``rlpipe.cloud.steps.release_unused_pool``, tested without AWS.
"""

from rlpipe.cloud import steps
from rlpipe.cloud.lambda_entry import powertools_handler

handler = powertools_handler(steps.release_unused_pool)
