"""Lambda: Store the waiting task's token by job name; complete the task at once if the job already ended.

Thin on purpose: the logic is ``rlpipe.cloud.steps.await_job_end``, tested without AWS.
"""

from rlpipe.cloud import steps
from rlpipe.cloud.lambda_entry import powertools_handler

handler = powertools_handler(steps.await_job_end)
