"""The daemon (`tagwatch run`): MQTT in, the pipeline, the case record, alerts out.

Modules, in the order a message meets them:
- `ingest`: drains the MQTT connection into micro-batches (count and time bound);
- `effects`: turns a pipeline result into one record Batch (entries, outbox, checkpoints)
  plus what to publish once it is committed;
- `service`: the Daemon: owns the pipeline, commits each batch (retrying while the record
  is unavailable), acknowledges after the commit, publishes, ticks, reloads, drains;
- `outbox`: publishes the record's pending `mqtt` outbox rows (also after a crash);
- `http`: /healthz, /readyz, /metrics (Starlette under uvicorn, in the daemon's loop);
- `metrics`, `logs` (structlog, with the one victim-data redaction processor), `cli`.
"""
