"""Which ML instance types carry local NVMe instance storage (``rlpipe/data/instance_storage.json``).

SageMaker rejects ``ResourceConfig.VolumeKmsKeyId`` for them ("You can't request a VolumeKmsKeyId when using
an instance type with local storage"), so the request leaves the key out: their local drives are encrypted by
the instance's hardware module instead, and no customer key applies.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def instance_storage_families() -> frozenset[str]:
    """Instance families (``g5``, ``p4d``, ...) whose instances have local NVMe storage."""
    table = json.loads(resources.files("rlpipe").joinpath("data", "instance_storage.json").read_text())
    return frozenset(table["families"])


def has_instance_storage(instance_type: str) -> bool:
    """Whether ``ml.<family>.<size>`` has local NVMe storage (and so takes no VolumeKmsKeyId)."""
    parts = instance_type.split(".")
    return len(parts) == 3 and parts[1] in instance_storage_families()
