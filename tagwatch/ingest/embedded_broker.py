"""An in-process MQTT 3.1.1 broker (amqtt) for `tagwatch demo` and for tests without Mosquitto.

Not for production: amqtt keeps sessions in memory only, and it forgets a QoS 1 message it
sent to a client that disconnects before acknowledging it (see ``EmbeddedBroker``).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

_NOISY_LOGGERS = ("amqtt", "transitions")


class OpenAuthPlugin(BaseAuthPlugin):
    """Accept every client without marking it anonymous.

    amqtt's AnonymousAuthPlugin flags sessions as anonymous, and amqtt neither queues
    messages for nor keeps the session of an anonymous client once it disconnects, which
    would defeat tagwatch's persistent session. Demo and tests only: no authentication.
    """

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Session) -> bool:
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def quiet_amqtt_logging(level: int = logging.ERROR) -> None:
    # amqtt logs every connection, and warns about ordinary events such as a client
    # probing with MQTT 5 before falling back to 3.1.1.
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)


class EmbeddedBroker:
    """``async with EmbeddedBroker(port=0) as broker: broker.url``.

    What amqtt 0.12 does for a persistent (clean session off) client: it keeps the session
    and subscriptions while the client is away and queues QoS 1 messages published
    meanwhile, delivering them on reconnect. What it does not do: redeliver a message that
    was sent but not acknowledged when the client vanished (it waits 5 s for the PUBACK,
    then drops the message), persist anything across a broker restart, or speak MQTT 5.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.quiet = quiet
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {f"{__name__}.OpenAuthPlugin": {}},
        }

    async def __aenter__(self) -> EmbeddedBroker:
        if self.quiet:
            quiet_amqtt_logging()
        self._broker = Broker(self.config())
        try:
            await self._broker.start()
        except Exception as exc:
            raise RuntimeError(f"embedded MQTT broker on {self.host}:{self.port}: {exc}") from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
