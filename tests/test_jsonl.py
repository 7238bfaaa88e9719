"""The streaming validator/rewriter on its own: chunk boundaries must not matter."""

from __future__ import annotations

import json

import pytest

from gateway.jsonl import LineError, Spooler, iter_lines, line_batches, rewrite_lines
from tests.helpers import jsonl, request_line


def spool(data: bytes, chunk: int) -> Spooler:
    s = Spooler(max_bytes=1 << 30, max_line_bytes=1 << 20, max_lines=10_000)
    for i in range(0, len(data), chunk):
        s.feed(data[i:i + chunk])
    s.finish()
    return s


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_chunking_does_not_change_the_result(chunk: int) -> None:
    data = jsonl([request_line(f"c-{i}", "m" if i % 2 else "n") for i in range(50)])
    s = spool(data, chunk)
    assert (s.lines, s.size, s.models) == (50, len(data), {"n": 1, "m": 2})
    assert [n for n, _ in iter_lines(s.spooled())] == list(range(1, 51))
    s.close()


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_error_line_number_survives_chunking(chunk: int) -> None:
    data = jsonl([request_line(f"c-{i}") for i in range(10)]) + b'{"custom_id": "x"}\n'
    with pytest.raises(LineError) as info:
        spool(data, chunk)
    assert info.value.line_no == 11


def test_rewrite_changes_only_the_model() -> None:
    lines = [request_line(f"c-{i}", "group", temperature=0.5, tools=[{"x": "é"}])
             for i in range(3000)]
    s = spool(jsonl(lines), 1 << 16)

    def prepare(line: dict) -> dict:  # type: ignore[type-arg]
        line["body"]["model"] = "deployment-a"
        return line

    copy = b"".join(rewrite_lines(batch, prepare) for batch in line_batches(s.spooled()))
    out = [json.loads(x) for x in copy.splitlines()]
    assert out == [{**x, "body": {**x["body"], "model": "deployment-a"}} for x in lines]
    s.close()


TRICKY = [
    b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"g"}}',
    b'{"custom_id": "a", "body": {"model" : "g", "messages": []}}',
    # The name inside content, escaped: not a key, so the only match is body.model.
    b'{"custom_id":"a","body":{"model":"g","messages":[{"content":"\\"model\\": \\"g\\""}]}}',
    # A second `model` key with a target value: ambiguous, must fall back to parsing.
    b'{"custom_id":"a","body":{"tools":[{"model":"g"}],"model":"g"}}',
    b'{"model":"g","custom_id":"a","body":{"model":"g"}}',
    # An escaped name: the pattern does not see it, parsing does.
    b'{"custom_id":"a","body":{"model":"\\u0067"}}',
    # Another target name.
    b'{"custom_id":"a","body":{"model":"h.2","x":"model"}}',
]


@pytest.mark.parametrize("raw", TRICKY)
def test_model_swap_agrees_with_parsing(raw: bytes) -> None:
    from gateway.jsonl import ModelSwap

    swap = ModelSwap(["g", "h.2"], "deploy-1")
    fast = swap(raw)
    parsed = json.loads(raw)
    parsed["body"]["model"] = "deploy-1"
    if fast is not None:
        assert json.loads(fast) == parsed
    # Ambiguous lines are left to the parser.
    if raw.count(b'"model":"g"') + raw.count(b'"model" : "g"') > 1:
        assert fast is None


def test_streaming_mode_hands_lines_over_instead_of_spooling() -> None:
    s = Spooler(max_bytes=1 << 30, max_line_bytes=1 << 20, max_lines=10_000)
    s.stream_to(["a"], max_lines=5, max_bytes=1 << 30)
    sent = jsonl([request_line("x-1", "a"), request_line("x-2", "a")])[:-10]
    s.feed(sent)
    ready, raw = s.take_ready()
    assert [n for n, _ in ready] == [1]
    assert raw == sent  # the bytes as uploaded, half a line included, for the kept copy
    assert s.file is None  # nothing written to disk
    with pytest.raises(LineError) as info:
        s.feed(jsonl([request_line("x-2", "a")])[-10:] + jsonl([request_line("x-3", "b")]))
    assert info.value.line_no == 3 and "not one of the target model names (a)" in str(info.value)


def test_a_failing_mapping_is_a_400_for_its_line() -> None:
    from gateway.jsonl import rewrite_lines

    def broken(line: dict[str, object]) -> dict[str, object]:
        raise KeyError("messages")

    with pytest.raises(LineError) as info:
        rewrite_lines([(1, b'{"body":{"model":"a"}}'), (7, b'{"body":{}}')], broken)
    assert info.value.line_no == 1 and "cannot be sent" in str(info.value)
