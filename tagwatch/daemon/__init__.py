"""The daemon (`tagwatch run`): wires the ingest edge, the pipeline, the case record and
the notifications together.

Modules, in the order a message meets them (the MQTT adapter and the batcher are in
`tagwatch.ingest`):
- `effects`: turns a pipeline result into one record Batch (entries, outbox, checkpoints)
  plus what to publish once it is committed;
- `service`: the Daemon: owns the pipeline, commits each batch (retrying while the record
  is unavailable), acknowledges after the commit, publishes, ticks, drains;
- `wiring`: the Daemon's feed and HTTP routes, operator actions, health, metrics, dispatcher;
- `caseset`: case files loaded (the refused-file rule), reload on SIGHUP, stop signals;
- `settings`: broker settings, anchor writer and notify summary from the config;
- `outbox`: publishes the record's pending `mqtt` outbox rows (also after a crash);
- `http`: /healthz, /readyz, /metrics (Starlette under uvicorn, in the daemon's loop);
- `anchoring`, `retention`, `metrics`, `logs` (structlog, with the one victim-data
  redaction processor), `main` (`tagwatch run`).
"""
