"""The ingest edge: how fixes get from tags and phones into the daemon (DESIGN 3.1, 4, 7).

- `mqtt`: the asyncio adapter around paho-mqtt 2 that acknowledges only after commit
  (broker settings, backoff, the received `Message`, one-shot publish);
- `paho_fast`: per-message costs of paho-mqtt 2.2 avoided, each checked against paho;
- `embedded_broker`: the in-process amqtt broker of `tagwatch demo` and of tests;
- `batcher`: the batcher of received messages, the rate gate and the isolation of a
  batch that fails to commit;
- `ratelimit`: per-device token buckets on each message's receiving clock;
- `traccar`: a Traccar HTTP forwarding body turned into a fix;
- `partitions` and `leases`: cluster mode (DESIGN 7), which partitions a worker serves
  (leases with epochs in PostgreSQL) and which tags, cases and checkpoints they hold.

Nothing here decides an alert: the pure core (`zones/`, `tagwatch/engine/`) does, on the
data this package hands it. The package `__init__` imports nothing, so importing one
module (say `ratelimit` from the pipeline) does not pull in paho or amqtt.
"""
