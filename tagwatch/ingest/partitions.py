"""Which tags, cases and checkpoints a partition holds, and its MQTT topics (DESIGN 7).

Pure: the broker's mapping puts a tag's fixes in partition `partition_of(tag, K)`, the
same answer as the NATS mapping ``partition(k,1)``: ``FNV-1a-32(<tag token>) mod k``
(nats-server ``getHashPartition``: ``fnv.New32a`` over the token's bytes, 2.9.10 and 2.15
alike). The hashed token is the NATS subject token, not the MQTT topic level: nats-server
2.10+ turns a '.' inside an MQTT level into "//" (2.9 refuses such topics), so "T.1" is
hashed as "T//1". A worker serving some partitions knows the cases with a
tag in them, and restores and drops exactly their rule state. A case whose tags fall in
two partitions is known to both owners (each serves its own tag's fixes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from zones import Case

FNV32_OFFSET = 0x811C9DC5
FNV32_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    h = FNV32_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV32_PRIME) & 0xFFFFFFFF
    return h


def partition_of(tag_id: str, k: int) -> int:
    """The partition (0..k-1) NATS's ``{{partition(k,1)}}`` gives the tag ``tag_id``."""
    if k < 1:
        raise ValueError(f"partition count must be >= 1, got {k}")
    if not tag_id:
        raise ValueError("tag id is empty")
    return fnv1a_32(tag_id.replace(".", "//").encode("utf-8")) % k


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


# The notification state (SMS ledger, escalation clocks) of one partition's alerts and
# victims: in cluster mode it moves with the partition, as the rule state does. The
# single process keeps the whole state under `notify:sms_ledger` / `notify:escalation`.
LEDGER_PREFIX = "notify:sms_ledger:p"
ESCALATION_PREFIX = "notify:escalation:p"


def notify_keys(partition: int) -> tuple[str, str]:
    """The checkpoint keys of a partition's SMS ledger and escalation state."""
    return f"{LEDGER_PREFIX}{partition}", f"{ESCALATION_PREFIX}{partition}"


def notify_partition(key: str) -> int | None:
    """The partition of a key of `notify_keys`, else None."""
    for prefix in (LEDGER_PREFIX, ESCALATION_PREFIX):
        if key.startswith(prefix) and key[len(prefix):].isdigit():
            return int(key[len(prefix):])
    return None


def case_partition(case: Case | None, k: int) -> int | None:
    """The partition of what concerns a case as a whole (its victims' records, their
    SMS rate limit): that of its first tag."""
    return partition_of(case.tags[0], k) if case is not None and case.tags else None
