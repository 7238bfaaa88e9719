"""`litellm_params` of an `azure/<deployment name>` entry, checked when the config loads."""

from __future__ import annotations

from typing import Annotated

import msgspec

from gateway import ProviderParams

DEFAULT_API_VERSION = "2024-10-21"  # GA with Files + Batches
V1_VERSIONS = frozenset({"v1", "preview"})  # select the /openai/v1/... surface
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_SCOPE = "https://cognitiveservices.azure.com/.default"
DAY = 86_400

Seconds = Annotated[float, msgspec.Meta(gt=0)]
# Azure accepts an upload expiry of 14 to 30 days, anchored at `created_at`.
ExpirySeconds = Annotated[int, msgspec.Meta(ge=14 * DAY, le=30 * DAY)]
ENTRA_FIELDS = ("tenant_id", "client_id", "client_secret")


class AzureParams(ProviderParams, kw_only=True):
    """`api_base` and exactly one credential are required: `api_key`, `azure_ad_token`, or
    `tenant_id` + `client_id` + `client_secret` (Entra ID client credentials)."""

    api_base: str  # https://<resource>.openai.azure.com (a trailing /openai or /openai/v1 is ok)
    api_version: Annotated[str, msgspec.Meta(min_length=1)] = DEFAULT_API_VERSION
    azure_ad_token: str | None = None  # a static Entra ID bearer token
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    azure_authority_host: str = DEFAULT_AUTHORITY  # where Entra ID issues tokens
    azure_scope: str = DEFAULT_SCOPE
    timeout: Seconds = 60.0  # one upstream call; transfers: between bytes
    file_ready_timeout: Seconds = 120.0  # the longest wait for an upload to leave `pending`
    file_poll_interval: Seconds = 0.5  # first wait between checks; doubles per check
    file_poll_max_interval: Seconds = 10.0
    # Without an expiry a resource holds 500 batch files, with one 10,000.
    file_expires_after: ExpirySeconds | None = None
    token_refresh_margin: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    max_requests_per_file: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100_000

    def __post_init__(self) -> None:
        # msgspec reports these without a path, so every message names its field.
        if not self.model.partition("/")[2].strip():
            raise ValueError(f"model: {self.model!r} names no deployment "
                             "(azure/<deployment name>)")
        if not self.api_base.strip():
            raise ValueError("api_base: the resource endpoint is required "
                             "(https://<resource>.openai.azure.com)")
        if not self.api_base.startswith(("https://", "http://")):
            raise ValueError(f"api_base: {self.api_base!r} is not an http(s) URL "
                             "(https://<resource>.openai.azure.com)")
        entra = [name for name in ENTRA_FIELDS if getattr(self, name)]
        if entra and len(entra) < len(ENTRA_FIELDS):
            missing = ", ".join(n for n in ENTRA_FIELDS if n not in entra)
            raise ValueError("Entra ID client credentials need tenant_id, client_id and "
                             f"client_secret; missing {missing}")
        given = [name for name, present in (
            ("api_key", bool(self.api_key)),
            ("azure_ad_token", bool(self.azure_ad_token)),
            ("tenant_id + client_id + client_secret", bool(entra)),
        ) if present]
        if not given:
            raise ValueError("a credential is required: set api_key, azure_ad_token, or "
                             "tenant_id + client_id + client_secret")
        if len(given) > 1:
            raise ValueError(f"set exactly one credential, not {' and '.join(given)}")
        if self.file_poll_max_interval < self.file_poll_interval:
            raise ValueError("file_poll_max_interval: must not be below file_poll_interval")

    @property
    def v1(self) -> bool:
        """The `/openai/v1/...` surface (no api-version needed) rather than the versioned one."""
        return self.api_version in V1_VERSIONS

    @property
    def resource(self) -> str:
        """The resource endpoint, also when the SDK's base URL was pasted."""
        base = self.api_base.strip().rstrip("/")
        for suffix in ("/openai/v1", "/openai"):
            base = base.removesuffix(suffix)
        return base

    @property
    def entra(self) -> bool:
        return bool(self.tenant_id)
