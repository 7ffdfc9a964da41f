"""SMS and voice calls through the official twilio client, pointed at `api_base`.

twilio-python 9 builds absolute https://{product}.twilio.com URLs; RebasedHttpClient
rewrites https://api.twilio.com to the configured api_base (a local server in tests, a
proxy in some deployments). Calls are blocking: the dispatcher runs them in a thread.
"""

from __future__ import annotations

import threading

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from tagwatch.config import TwilioConfig
from tagwatch.notify.outcome import (
    SendFailed,
    Sent,
    kind_for_status,
    retry_after_seconds,
)

TWILIO_API = "https://api.twilio.com"


class RebasedHttpClient(TwilioHttpClient):
    """Sends to api_base instead of api.twilio.com; remembers each thread's last response
    (the twilio exceptions drop the headers, and 429 needs Retry-After)."""

    def __init__(self, api_base: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.api_base = api_base.rstrip("/")
        self._local = threading.local()

    def request(self, method: str, url: str, *args, **kwargs) -> Response:  # type: ignore[override]
        if url.startswith(TWILIO_API):
            url = self.api_base + url[len(TWILIO_API) :]
        self._local.last = None
        response = super().request(method, url, *args, **kwargs)
        self._local.last = response
        return response

    def last_header(self, name: str) -> str | None:
        last = getattr(self._local, "last", None)
        if last is None or last.headers is None:
            return None
        return next((v for k, v in last.headers.items() if k.lower() == name.lower()), None)


class TwilioChannel:
    def __init__(self, config: TwilioConfig, timeout_s: float = 10.0) -> None:
        self.config = config
        self.http = RebasedHttpClient(config.api_base, timeout_s)
        self.client = Client(config.account_sid, config.auth_token, http_client=self.http)

    def send_sms(self, to: str, text: str, status_callback: str | None = None) -> Sent:
        extra = {"status_callback": status_callback} if status_callback else {}
        message = self._call(
            lambda: self.client.messages.create(
                to=to, from_=self.config.from_number, body=text, **extra
            )
        )
        return Sent({"sid": message.sid, "status": str(message.status)})

    def call(
        self, to: str, text: str, language: str = "en-GB", status_callback: str | None = None
    ) -> Sent:
        twiml = VoiceResponse()
        twiml.say(text, language=language)
        twiml.pause(length=1)
        twiml.say(text, language=language)  # said twice: the first may be missed
        extra = {"status_callback": status_callback} if status_callback else {}
        call = self._call(
            lambda: self.client.calls.create(
                to=to, from_=self.config.from_number, twiml=str(twiml), **extra
            )
        )
        return Sent({"sid": call.sid, "status": str(call.status)})

    def _call(self, send):
        try:
            return send()
        except TwilioRestException as exc:
            retry_after = retry_after_seconds(self.http.last_header("Retry-After"))
            raise SendFailed(
                kind_for_status(exc.status),
                f"Twilio HTTP {exc.status} (code {exc.code}): {exc.msg}",
                retry_after,
            ) from None
        except requests.exceptions.ConnectTimeout as exc:
            raise SendFailed(
                "retry", f"Twilio at {self.config.api_base}: connect timeout: {exc}"
            ) from None
        except requests.exceptions.Timeout:
            # the request may have reached Twilio: resend, the text carries the same ref
            raise SendFailed(
                "unknown", f"Twilio at {self.config.api_base}: no answer in {self.http.timeout:g} s"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise SendFailed("retry", f"Twilio at {self.config.api_base}: {exc}") from None
        except TwilioException as exc:
            raise SendFailed("retry", f"Twilio at {self.config.api_base}: {exc}") from None
