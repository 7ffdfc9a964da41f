"""A broker url listing several nodes (DESIGN 7): tried in turn, first and after a loss."""

from __future__ import annotations

import asyncio
import dataclasses

from tagwatch.ingest.embedded_broker import free_port
from tagwatch.ingest.mqtt import MqttConnection
from tests.brokers import unique_client_id
from tests.test_mqtt import STEP_S, run


def test_a_dead_first_node_is_skipped_and_a_lost_node_gives_way_to_the_next(
    mosquitto_factory,
) -> None:
    first, second = mosquitto_factory(), mosquitto_factory()
    dead = free_port()  # nothing listens there
    nodes = (("127.0.0.1", dead), ("127.0.0.1", first.port), ("127.0.0.1", second.port))
    settings = dataclasses.replace(
        first.settings(client_id=unique_client_id("nodes")),
        host="127.0.0.1", port=dead, nodes=nodes,
    )

    async def main() -> None:
        conn = MqttConnection(settings, [("nodes/test", 1)])
        async with asyncio.timeout(STEP_S * 2):
            await conn.__aenter__()
        try:
            assert conn._where == f"127.0.0.1:{first.port}"
            first.kill()
            await conn.wait_until(lambda c: not c.connected.is_set(), STEP_S)
            # the next attempt after the loss goes to the next node: the dead one, then
            # round to the first (down), ... it must end on `second`
            await conn.wait_until(lambda c: c.ready.is_set(), STEP_S * 3)
            assert conn._where == f"127.0.0.1:{second.port}"
        finally:
            await conn.__aexit__(None, None, None)

    run(main, 60.0)
