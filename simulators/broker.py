"""The simulator's broker options: the same as the daemon's (DESIGN 3.7).

`mqtt://host[:port]` or `mqtts://host[:port]` (TLS, default port 8883), a CA file to
trust the broker with, a client certificate and key (a device listener that requires
one), a username, and the password from the environment only: TAGWATCH_SIM_PASSWORD,
else TAGWATCH_BROKER_PASSWORD (the daemon's). Credentials in the URL are refused, as
the daemon refuses them: a URL ends up in logs and process lists.
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PASSWORD_ENVS = ("TAGWATCH_SIM_PASSWORD", "TAGWATCH_BROKER_PASSWORD")


@dataclass(frozen=True)
class BrokerOptions:
    host: str
    port: int
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Scheme, host and port: for messages, never with credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"broker {self.url}: TLS files: {exc}") from None
        return ctx


def parse(url: str, *, ca_file: str | None = None, cert_file: str | None = None,
          key_file: str | None = None, username: str | None = None,
          environ: Mapping[str, str] | None = None) -> BrokerOptions:
    """Options from a URL and the TLS and credential options; ValueError names the flag."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp") or not parts.hostname:
        raise ValueError(f"--broker {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    if parts.username is not None or parts.password is not None:
        raise ValueError("--broker: credentials in the URL; use --username and "
                         f"{PASSWORD_ENVS[0]}")
    tls = parts.scheme == "mqtts"
    if (ca_file or cert_file or key_file) and not tls:
        raise ValueError("--ca-file, --cert-file and --key-file need an mqtts:// broker")
    if key_file and not cert_file:
        raise ValueError("--key-file needs --cert-file")
    env = os.environ if environ is None else environ
    password = next((env[name] for name in PASSWORD_ENVS if env.get(name)), None)
    return BrokerOptions(parts.hostname, parts.port or (8883 if tls else 1883), tls, ca_file,
                         cert_file, key_file, username, password if username else None)


def add_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--broker and the TLS and credential options, on a sub-command's parser."""
    parser.add_argument("--broker", required=required, help="mqtt://HOST[:PORT] or mqtts://...")
    parser.add_argument("--ca-file", help="CA certificate(s) to trust the broker with (mqtts)")
    parser.add_argument("--cert-file", help="client certificate (mqtts, a device listener)")
    parser.add_argument("--key-file", help="its private key (default: in --cert-file)")
    parser.add_argument("--username", help=f"MQTT username; password from {PASSWORD_ENVS[0]} "
                                           f"or {PASSWORD_ENVS[1]}")


def from_args(args: argparse.Namespace) -> BrokerOptions:
    return parse(args.broker, ca_file=args.ca_file, cert_file=args.cert_file,
                 key_file=args.key_file, username=args.username)
