"""Anthropic Message Batches adapter for batch-gateway (`model: anthropic/<model>`).

Developers keep uploading OpenAI chat-completions batch files; each line is mapped to a
Messages API request (`mapping`), the batch runs as an Anthropic Message Batch, and its results
come back as OpenAI batch-output lines under the client's own `custom_id`s (`wire`). Written
against the public `gateway` API only. See README.md.
"""

from gateway import Provider, hookimpl

from .mapping import ChatMapper, native_custom_id
from .params import AnthropicParams
from .provider import AnthropicProvider

__all__ = ["AnthropicParams", "AnthropicProvider", "ChatMapper", "native_custom_id"]


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [AnthropicProvider]
