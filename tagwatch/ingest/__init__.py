"""The ingest edge: how fixes come in (and, in cluster mode, which partitions this
worker serves: leases.py)."""
