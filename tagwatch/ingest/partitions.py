"""Which tags, cases and checkpoints a partition holds, and its MQTT topics (DESIGN 7).

Pure: the broker's mapping puts a tag's fixes in partition `partition_of(tag, K)`
(tagwatch/cluster_partition.py); a worker serving some partitions knows the cases with a
tag in them, and restores and drops exactly their rule state. A case whose tags fall in
two partitions is known to both owners (each serves its own tag's fixes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tagwatch.cluster_partition import partition_of
from zones import Case


def subscription(prefix: str, partition: int) -> str:
    """The MQTT filter of a partition's persistent session: `{prefix}/{p}/+`."""
    return f"{prefix}/{partition}/+"


def client_id(base: str, partition: int) -> str:
    """A partition's session is the same MQTT client id whichever worker holds it."""
    return f"{base}-p{partition}"


def tag_of(prefix: str, topic: str) -> str | None:
    """The tag id of a topic `{prefix}/{p}/{tag}`, else None."""
    head, _, tag = topic.rpartition("/")
    if not tag or not head.startswith(prefix + "/"):
        return None
    return tag


def cases_in(cases: Mapping[str, Case], partitions: Iterable[int], k: int) -> dict[str, Case]:
    """The cases with a tag in one of these partitions."""
    wanted = set(partitions)
    return {
        cid: case
        for cid, case in cases.items()
        if any(partition_of(tag, k) in wanted for tag in case.tags)
    }


def checkpoint_keys(cases: Iterable[Case]) -> set[str]:
    """The engine's checkpoint keys of these cases: their tags, their victims' phones and
    their victims' protection (tagwatch/engine/core.py Engine.checkpoints)."""
    keys: set[str] = set()
    for case in cases:
        keys.update(f"tag:{tag}" for tag in case.tags)
        for victim in case.victims:
            keys.add(f"victim:{case.id}/{victim.id}")
            if victim.phone_device:
                keys.add(f"device:{victim.phone_device}")
    return keys
