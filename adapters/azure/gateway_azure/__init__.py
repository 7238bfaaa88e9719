"""Azure OpenAI adapter: `model: azure/<deployment name>` on Global-Batch / DataZoneBatch
deployments.

Azure speaks OpenAI's Files + Batches protocol with differences absorbed here: resources
under `{api_base}/openai/...?api-version=` (or the `/openai/v1/...` surface), `api-key` or
Entra ID auth, uploads that start `pending`, Microsoft's error envelope, and loose response
shapes (ISO timestamps, `"Validating"`-style statuses, `""` file ids, string error lines).

litellm_params (`AzureParams`, checked when the config loads):
- `api_base` (required): `https://<resource>.openai.azure.com`; the SDK's `.../openai` or
  `.../openai/v1` base URL is accepted too.
- exactly one credential: `api_key` (sent as `api-key`), `azure_ad_token` (a static bearer
  token), or `tenant_id` + `client_id` + `client_secret` (Entra ID client credentials;
  `azure_authority_host` and `azure_scope` override the token endpoint and scope,
  `token_refresh_margin` (s, default 300) how early a token is renewed).
- `api_version`: default 2024-10-21; `v1` / `preview` select the v1 surface.
- `timeout` (s per upstream call, default 60), `file_ready_timeout` (s, default 120: the longest
  wait for an upload to be processed), `file_poll_interval` (0.5) / `file_poll_max_interval` (10),
  `file_expires_after` (s, 14 to 30 days; without it a resource holds only 500 batch files),
  `max_requests_per_file` (default 100,000, Azure's cap).

Modules: `params` (the settings), `provider` (`AzureProvider`), `shapes` (line urls, error
envelope, loose Batch JSON), `entra` (client-credentials tokens).
"""

from __future__ import annotations

from gateway import Provider, hookimpl
from gateway_azure.entra import EntraToken
from gateway_azure.params import DEFAULT_API_VERSION, AzureParams
from gateway_azure.provider import AzureProvider
from gateway_azure.shapes import azure_error, azure_url, epoch, normalise_batch

__all__ = [
    "DEFAULT_API_VERSION",
    "AzureParams",
    "AzureProvider",
    "EntraToken",
    "azure_error",
    "azure_url",
    "epoch",
    "normalise_batch",
    "register_providers",
]


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [AzureProvider]
