"""The dashboard feed (DESIGN 3.8): HTTP API, Server-Sent Events and the operator page."""

from tagwatch.feed.actions import AlertResolved, UnknownAlert, record_actions, resolve
from tagwatch.feed.app import create_app
from tagwatch.feed.events import EventHub

__all__ = ["AlertResolved", "EventHub", "UnknownAlert", "create_app", "record_actions", "resolve"]
