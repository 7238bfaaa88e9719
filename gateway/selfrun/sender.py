"""Sending one request line to a deployment's endpoint, within its limits, with retries.

429, 408, 409, 5xx, timeouts and connection failures are tried again, at most `max_retries`
more times, after an exponential backoff with jitter (or the `Retry-After` the endpoint asks
for, if longer). Any other answer is final. A line whose last try failed goes to the error
file with what that try got.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import secrets
import time
from dataclasses import dataclass

import aiohttp
import msgspec

from gateway.selfrun.limits import Limiter, estimate_tokens, stopped_within
from gateway.selfrun.params import GatewayRunParams
from gateway.selfrun.wire import Tokens, answer_usage, error_body, error_line, response_line

BACKOFF_BASE = 0.5  # seconds before the first retry, doubling
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 300.0
_REQUEST_IDS = ("x-request-id", "request-id")


@dataclass(frozen=True)
class Outcome:
    failed: bool  # the line goes to the error file
    line: bytes  # its output or error line
    tokens: Tokens | None = None


def retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds before try `attempt` (1 = the first retry): half to all of base * 2^(n-1), so
    lines that failed together do not come back together; at least what the endpoint asked."""
    ceiling = min(BACKOFF_BASE * 2 ** (attempt - 1), BACKOFF_CAP)
    wait = random.uniform(ceiling / 2, ceiling)
    return max(wait, min(retry_after, RETRY_AFTER_CAP)) if retry_after else wait


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    with contextlib.suppress(TypeError, ValueError):
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    return None


def _valid_json(body: bytes) -> bool:
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False
    return True


class Sender:
    def __init__(self, http: aiohttp.ClientSession, params: GatewayRunParams,
                 limiter: Limiter) -> None:
        self.http = http
        self.params = params
        self.limiter = limiter
        self.headers = {"Content-Type": "application/json"}
        if params.api_key:
            self.headers["Authorization"] = f"Bearer {params.api_key}"
        self.timeout = aiohttp.ClientTimeout(total=params.timeout)

    async def send(self, url: str, endpoint: str, custom_id: str, body: bytes,
                   stop: asyncio.Event) -> Outcome | None:
        """The line's outcome; None when `stop` was set before it was ever sent. Once sent, a
        stop ends the retries and the last try's failure is the outcome."""
        estimate = estimate_tokens(endpoint, body)
        last: Outcome | None = None
        retry_after: float | None = None
        for attempt in range(self.params.max_retries + 1):
            if attempt and await stopped_within(stop, backoff(attempt, retry_after)):
                return last
            if stop.is_set():
                return last
            spend = await self.limiter.acquire(estimate, stop)
            if spend is None:  # stopped while this line waited for its turn
                return last
            try:
                outcome, retry, retry_after = await self._try(url, custom_id, body)
            finally:
                self.limiter.release()
            if outcome.tokens is not None:
                self.limiter.correct(spend, outcome.tokens.total)
            last = outcome
            if not retry:
                return outcome
        return last

    async def _try(self, url: str, custom_id: str,
                   body: bytes) -> tuple[Outcome, bool, float | None]:
        """One try: its outcome, whether another try may do better, and the wait asked for."""
        try:
            async with self.http.post(url, data=body, headers=self.headers,
                                      timeout=self.timeout) as resp:
                data = await resp.read()
                status = resp.status
                request_id = next((resp.headers[h] for h in _REQUEST_IDS if h in resp.headers),
                                  None) or "req_" + secrets.token_hex(16)
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            return Outcome(True, error_line(
                custom_id, "request_timeout",
                f"The endpoint did not answer within {self.params.timeout:g} s.")), True, None
        except aiohttp.ClientError:
            # Not the exception's text: it names the endpoint's address.
            return Outcome(True, error_line(custom_id, "connection_error",
                                            "The endpoint could not be reached.")), True, None
        if 200 <= status < 300:
            try:
                tokens = answer_usage(data)
            except msgspec.DecodeError:
                return Outcome(True, error_line(
                    custom_id, "invalid_response",
                    f"The endpoint answered HTTP {status} with a body that is not a JSON "
                    "object.")), True, None
            return Outcome(False, response_line(custom_id, status, request_id, data),
                           tokens), False, None
        answer = data if _valid_json(data) else error_body(status, data)
        return (Outcome(True, response_line(custom_id, status, request_id, answer)),
                retryable(status), retry_after)
