"""Paging through hundreds of batches with `after`: every batch exactly once, newest first."""

from __future__ import annotations

import openai

from tests.conftest import GROUP
from tests.helpers import batch_file


def test_paging_through_250_batches(client: openai.OpenAI) -> None:
    f = client.files.create(file=batch_file(1), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    made = [
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(250)
    ]
    seen: list[str] = []
    page = client.batches.list(limit=100)
    pages = 0
    while True:
        pages += 1
        seen.extend(b.id for b in page.data)
        if not page.has_more:
            break
        page = client.batches.list(limit=100, after=page.data[-1].id)
    assert pages == 3
    assert seen == list(reversed(made))
    # The SDK's own auto-pagination agrees.
    assert [b.id for b in client.batches.list(limit=7)] == list(reversed(made))
