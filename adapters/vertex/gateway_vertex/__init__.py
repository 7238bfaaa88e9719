"""Vertex AI adapter: `model: vertex_ai/<gemini model>` deployments, batches run as Gemini
`batchPredictionJobs` over GCS, spoken to clients as OpenAI Files + Batches."""

from __future__ import annotations

from gateway import Provider, hookimpl
from gateway_vertex.provider import VertexParams, VertexProvider

__all__ = ["VertexParams", "VertexProvider", "register_providers"]


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [VertexProvider]
