"""Exit codes of `gateway batch` / `gateway files`, and the message for each way they fail.

| code | meaning                                                                 |
|------|-------------------------------------------------------------------------|
| 0    | success; for a batch: completed with no failed requests                 |
| 1    | usage or configuration error (bad flag, missing key, unreadable file)   |
| 2    | the gateway answered with an error, or could not be reached             |
| 3    | the batch completed, but some of its requests failed                    |
| 4    | the batch failed (e.g. its input was refused upstream)                  |
| 5    | the batch expired before it finished                                    |
| 6    | the batch was cancelled                                                 |
| 7    | the batch has not finished yet (`status` / `download` without `--wait`) |
| 130  | interrupted (Ctrl-C); the batch, if created, keeps running              |
"""

from __future__ import annotations

from typing import Any

import openai

OK = 0
USAGE = 1
API_ERROR = 2
PARTIAL = 3
FAILED = 4
EXPIRED = 5
CANCELLED = 6
RUNNING = 7
INTERRUPTED = 130

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


class CliError(Exception):
    """Stops a command: `message` goes to stderr (or into the JSON answer), `code` is the
    exit code; `error` is the gateway's error object when there was one."""

    def __init__(self, message: str, code: int, error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.error = error


def outcome(status: str, failed: int) -> int:
    """How a batch ended, as an exit code."""
    if status == "completed":
        return PARTIAL if failed else OK
    return {"failed": FAILED, "expired": EXPIRED, "cancelled": CANCELLED}.get(status, RUNNING)


def from_api(e: openai.OpenAIError, base_url: str) -> CliError:
    """The gateway's error envelope (or a transport failure) as one clear message."""
    if isinstance(e, openai.APIStatusError):
        body = e.body if isinstance(e.body, dict) else {}
        message = str(body.get("message") or "") or _raw(e)
        details = [f"HTTP {e.status_code}"]
        details += [f"{k} {body[k]}" for k in ("type", "code", "param") if body.get(k)]
        hint = {401: " Check OPENAI_API_KEY / --api-key.",
                429: " The gateway is busy; try again later."}.get(e.status_code, "")
        # Line errors ("Line N: ...") and every other gateway message are shown as sent.
        text = f"{message}{hint} ({', '.join(details)})"
        error = {**body, "status": e.status_code} if body else {"message": message,
                                                              "status": e.status_code}
        return CliError(text, API_ERROR, error)
    if isinstance(e, openai.APITimeoutError):
        return CliError(f"The gateway at {base_url} did not answer in time.", API_ERROR,
                        {"message": "timeout"})
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e
        return CliError(f"Cannot reach the gateway at {base_url}: {cause}. Is it running? "
                        "Set OPENAI_BASE_URL or --base-url.", API_ERROR,
                        {"message": f"connection error: {cause}"})
    return CliError(str(e), API_ERROR, {"message": str(e)})


def _raw(e: openai.APIStatusError) -> str:
    try:
        text = e.response.text.strip()
    except Exception:  # a streamed response that was not read
        text = ""
    return text[:500] or f"The gateway answered HTTP {e.status_code}."
