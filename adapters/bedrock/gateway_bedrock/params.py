"""`litellm_params` of a `bedrock/<model id>` entry (LiteLLM's names), checked when the config
loads: a bad entry stops start-up with a message naming the field."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from gateway import ProviderParams

DEFAULT_PREFIX = "batch-gateway"
MIB = 1 << 20
# S3 multipart: every part but the last at least 5 MiB, at most 5 GiB.
MIN_PART = 5 * MIB
DEFAULT_PART = 8 * MIB

# AWS partitions' region names: us-east-1, us-gov-west-1, ap-southeast-2, cn-north-1, ...
_REGION = r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$"
# Bedrock's RoleArn pattern (botocore service model), anchored.
_ROLE_ARN = r"^arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+$"
# S3 bucket names as Bedrock's S3Uri pattern takes them (no underscores, no upper case).
_BUCKET = re.compile(r"[a-z0-9][-.a-z0-9]{1,61}[a-z0-9]")
# Key segments Bedrock's S3Uri pattern allows.
_KEY_SEGMENT = re.compile(r"[-!_*'().a-zA-Z0-9]+")
# `anthropic.claude-…`, or a cross-region inference profile `us.anthropic.claude-…`
# (us, eu, apac, us-gov, global, jp, au, ...).
_CLAUDE = re.compile(r"(?:[a-z]{2,6}(?:-[a-z]+)?\.)?anthropic\.[a-z0-9.:-]+")
# LiteLLM's route markers inside `bedrock/<route>/<model id>`.
_INVOKE_ROUTE = "invoke/"
_OTHER_ROUTES = ("converse/", "converse_like/", "llama/", "deepseek_r1/", "openai/", "qwen3/",
                 "nova/", "mistral/")


class BedrockParams(ProviderParams, kw_only=True):
    """LiteLLM's Bedrock batch settings. Credentials are optional as a pair: without
    `aws_access_key_id` / `aws_secret_access_key` botocore's default chain is used (see
    README), resolved at the first call, never at start-up."""

    aws_region_name: Annotated[str, msgspec.Meta(pattern=_REGION)]
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    s3_bucket_name: str
    s3_prefix: str = DEFAULT_PREFIX  # the gateway writes only under it
    s3_region_name: Annotated[str, msgspec.Meta(pattern=_REGION)] | None = None
    aws_batch_role_arn: Annotated[str, msgspec.Meta(pattern=_ROLE_ARN, max_length=2048)]
    s3_endpoint_url: str | None = None  # else https://s3.<region>.amazonaws.com
    # S3 multipart part size; files smaller than one part go up in a single PutObject.
    s3_upload_part_size: Annotated[int, msgspec.Meta(ge=MIN_PART, le=5 << 30)] = DEFAULT_PART
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # Bedrock's quotas "Minimum number of records per batch inference job" (100) and "Records
    # per batch inference job" (50,000): per model and account, adjustable in Service Quotas.
    min_requests_per_job: Annotated[int, msgspec.Meta(ge=1)] = 100
    max_requests_per_job: Annotated[int, msgspec.Meta(ge=1)] = 50_000
    timeout_hours: Annotated[int, msgspec.Meta(ge=24, le=168)] | None = None
    # Claude requires max_tokens: lines without max_tokens / max_completion_tokens get this.
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None

    def __post_init__(self) -> None:
        model_id(self.model)  # raises for a model family this adapter does not map
        if bool(self.aws_access_key_id) != bool(self.aws_secret_access_key):
            missing = "aws_secret_access_key" if self.aws_access_key_id else "aws_access_key_id"
            raise ValueError(f"{missing}: required with the other half of the key pair (or "
                             "leave both out to use the AWS default credential chain)")
        if self.aws_session_token and not self.aws_access_key_id:
            raise ValueError("aws_session_token: only with aws_access_key_id and "
                             "aws_secret_access_key")
        bucket = self.s3_bucket_name.strip().removeprefix("s3://").strip("/")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise ValueError(f"s3_bucket_name: {self.s3_bucket_name!r} is not an S3 bucket name "
                             "(3-63 characters of a-z 0-9 . -; the path goes in s3_prefix)")
        self.s3_bucket_name = bucket
        prefix = self.s3_prefix.strip().strip("/")
        if prefix and not all(_KEY_SEGMENT.fullmatch(p) for p in prefix.split("/")):
            raise ValueError(f"s3_prefix: {self.s3_prefix!r} has characters Bedrock refuses in "
                             "S3 URIs (allowed: letters, digits and - ! _ * ' ( ) . per segment)")
        self.s3_prefix = prefix
        if self.min_requests_per_job > self.max_requests_per_job:
            raise ValueError("min_requests_per_job: larger than max_requests_per_job")
        for name in ("api_base", "s3_endpoint_url"):
            value = getattr(self, name)
            if value is not None and not re.match(r"^https?://[^/\s]+", value):
                raise ValueError(f"{name}: {value!r} is not an http(s) URL")


def model_id(model: str) -> str:
    """The Bedrock model id of a `model` setting (`bedrock/[invoke/]<id>`), if it is a model
    this adapter maps; else ValueError naming the field."""
    rest = model.partition("/")[2] if "/" in model else model
    if rest.startswith(_OTHER_ROUTES):
        raise ValueError(f"model: {model!r}: only InvokeModel-format jobs are mapped here "
                         "(use bedrock/<model id> or bedrock/invoke/<model id>)")
    rest = rest.removeprefix(_INVOKE_ROUTE)
    if not rest or len(rest) > 2048:
        raise ValueError(f"model: {model!r} names no Bedrock model id")
    # A foundation-model or inference-profile ARN ends in the model or profile id.
    tail = rest.rsplit("/", 1)[-1] if rest.startswith("arn:") else rest
    if not _CLAUDE.fullmatch(tail):
        raise ValueError(
            f"model: {rest!r} is not an Anthropic Claude model on Bedrock; this adapter maps "
            "OpenAI chat requests to Claude's Messages body only (model ids such as "
            "anthropic.claude-… or us.anthropic.claude-…, or their foundation-model / "
            "inference-profile ARNs). Other families and application inference profiles "
            "are not supported.")
    return rest
