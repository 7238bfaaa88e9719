"""A deployment's request limits, as one instance keeps them: at most `parallel` requests in
flight, `rpm` requests and `tpm` tokens in any rolling window (a minute, LiteLLM's unit).

Tokens are counted before a request goes (an estimate from the request) and corrected with
the usage its answer reports, so the window holds what was really used as soon as it is known.
Requests take their turn in order: a large request waiting for tokens is not overtaken by
small ones forever.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass

import msgspec

# Answers shorter than this are the common case; a request that names no output bound is
# counted at this many output tokens until its usage is known.
DEFAULT_OUTPUT_TOKENS = 256


class _Bounds(msgspec.Struct):
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_output_tokens: int | None = None  # /v1/responses
    n: int | None = None


_bounds = msgspec.json.Decoder(_Bounds).decode


def estimate_tokens(endpoint: str, body: bytes) -> int:
    """Tokens a request may use: its text at ~4 bytes a token, plus its output bound."""
    prompt = len(body) // 4 + 1
    if endpoint == "/v1/embeddings":
        return prompt
    try:
        b = _bounds(body)
    except msgspec.DecodeError:
        return prompt + DEFAULT_OUTPUT_TOKENS
    out = b.max_completion_tokens or b.max_tokens or b.max_output_tokens or DEFAULT_OUTPUT_TOKENS
    return prompt + max(out, 0) * max(b.n or 1, 1)


@dataclass
class Spend:
    """One request's place in the window."""

    at: float
    tokens: int
    counted: bool = True  # False once it left the window


class Limiter:
    def __init__(self, parallel: int, rpm: int | None, tpm: int | None,
                 window: float = 60.0) -> None:
        self.parallel = parallel
        self.rpm = rpm
        self.tpm = tpm
        self.window = window
        self.slots = asyncio.Semaphore(parallel)
        self._turn = asyncio.Lock()
        self._spent: collections.deque[Spend] = collections.deque()
        self._tokens = 0

    # -- the arithmetic (no waiting: testable with any clock) ---------------------------------

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0].at <= now - self.window:
            gone = self._spent.popleft()
            gone.counted = False
            self._tokens -= gone.tokens

    def delay(self, estimate: int, now: float) -> float:
        """Seconds until a request of `estimate` tokens fits; 0 when it fits now."""
        self._expire(now)
        if not self._spent:
            return 0.0  # an empty window takes any request, however large
        waits = [0.0]
        if self.rpm is not None and len(self._spent) >= self.rpm:
            waits.append(self._spent[len(self._spent) - self.rpm].at + self.window - now)
        if self.tpm is not None and self._tokens + estimate > self.tpm:
            # Until enough of the oldest spends leave the window.
            freed = self._tokens + estimate - self.tpm
            for spend in self._spent:
                freed -= spend.tokens
                if freed <= 0:
                    waits.append(spend.at + self.window - now)
                    break
            else:
                waits.append(self._spent[-1].at + self.window - now)
        return max(waits)

    def take(self, estimate: int, now: float) -> Spend:
        spend = Spend(now, estimate)
        self._spent.append(spend)
        self._tokens += estimate
        return spend

    def correct(self, spend: Spend, tokens: int) -> None:
        """The answer's usage replaces the estimate."""
        if spend.counted:
            self._tokens += tokens - spend.tokens
        spend.tokens = tokens

    # -- waiting --------------------------------------------------------------------------------

    async def acquire(self, estimate: int, stop: asyncio.Event) -> Spend | None:
        """A slot and room in the window (`release()` the slot when the answer is in); None
        when `stop` is set first: a cancelled run does not wait out a minute's rpm."""
        if not await _first(self.slots, stop):
            return None
        try:
            if not await _first(self._turn, stop):
                self.slots.release()
                return None
            try:
                while (wait := self.delay(estimate, time.monotonic())) > 0:
                    if await stopped_within(stop, wait):
                        self.slots.release()
                        return None
                return self.take(estimate, time.monotonic())
            finally:
                self._turn.release()
        except BaseException:
            self.slots.release()
            raise

    def release(self) -> None:
        self.slots.release()


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less if `stop` is set; True when it was."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _first(gate: asyncio.Semaphore | asyncio.Lock, stop: asyncio.Event) -> bool:
    """Acquire `gate` unless `stop` is set first; True when it is held."""
    if stop.is_set():
        return False
    if not gate.locked():
        await gate.acquire()  # free: no wait, no tasks
        return True
    acquiring = asyncio.ensure_future(gate.acquire())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((acquiring, stopping), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        stopping.cancel()
        acquiring.cancel()  # a no-op when it got the gate already: then give it back
        if acquiring.done() and not acquiring.cancelled():
            gate.release()
        raise
    stopping.cancel()
    if acquiring.done():
        return True
    acquiring.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await acquiring  # got the gate while being cancelled: give it back
        gate.release()
    return False
