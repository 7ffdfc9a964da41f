"""Which partition a tag is in: the same answer as the NATS mapping ``partition(k,1)``.

The broker puts ``tagwatch.v1.tags.<tag>.fix`` in partition
``FNV-1a-32(<tag token>) mod k`` (nats-server ``getHashPartition``: ``fnv.New32a`` over
the token's bytes, 2.9.10 and 2.15 alike), so a worker can tell, without asking the
broker, which partition a tag or a case belongs to. Pure: no I/O.

The hashed token is the NATS subject token, not the MQTT topic level: nats-server 2.10+
turns a '.' inside an MQTT level into "//" (2.9 refuses such topics), so "T.1" is hashed
as "T//1".
"""

from __future__ import annotations

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
