"""Lambda: the end of one lineage: stop its job if it failed, release its pools, its own report.

Thin on purpose: the logic is ``rlpipe.cloud.steps.end_lineage``, tested without AWS.
"""

from rlpipe.cloud import steps
from rlpipe.cloud.lambda_entry import powertools_handler

handler = powertools_handler(steps.end_lineage)
