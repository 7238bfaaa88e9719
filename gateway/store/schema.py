"""Every table, the versioned migrations, and `Columns`: a row type read from and written to its
table by field name, so a column is named in its table and its row type and nowhere else."""

from __future__ import annotations

import dataclasses
import operator
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import msgspec
import sqlalchemy as sa

from gateway.store.db import Database, Row

metadata = sa.MetaData()


def _json_column(name: str, **kw: Any) -> sa.Column[str]:
    """A TEXT column holding JSON: `Columns` encodes and decodes it."""
    return sa.Column(name, sa.Text, info={"json": True}, **kw)


def _spend_columns() -> list[sa.Column[Any]]:
    """What keys, users and teams have for budgets: the spend of the current budget window
    (priced finished batches) and when that window ends (None: no `budget_duration`)."""
    return [
        sa.Column("spend", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("budget_reset_at", sa.BigInteger),
    ]


schema_version = sa.Table(
    "gateway_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.BigInteger, nullable=False),
)

keys = sa.Table(
    "gateway_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("key_alias", sa.String(256)),
    sa.Column("team_id", sa.String(256)),
    sa.Column("user_id", sa.String(256)),
    _json_column("models", nullable=False),  # list; empty = every model group
    _json_column("metadata", nullable=False),  # object
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger),
    # Version 4: blocked keys answer 401; budgets and rate limits (`_spend_budgets_rpm`).
    sa.Column("blocked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("max_budget", sa.Float),
    sa.Column("budget_duration", sa.String(32)),
    sa.Column("rpm_limit", sa.Integer),
    *_spend_columns(),
)

files = sa.Table(
    "gateway_files",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("owner", sa.String(300), nullable=False),  # key_… or user:<user_id>
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("filename", sa.String(512), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    _json_column("model_groups", nullable=False),  # list
    # For input files: the body.model the user wrote (kept for files from before v3).
    sa.Column("source_model", sa.String(256)),
    # Version 3: input files are kept by the gateway (`kept_key` in the file store) with their
    # request count; a batch's result files name the batch and which result they are.
    sa.Column("request_count", sa.Integer),
    sa.Column("kept_key", sa.String(512)),
    sa.Column("source_batch", sa.String(64)),
    sa.Column("result_kind", sa.String(16)),
    # Since `_file_expiry`: when the file goes, as asked at upload (`expires_after`).
    sa.Column("expires_at", sa.BigInteger),
    # Since `_file_endpoint`: the `url` every line of an input names (checked alike at upload),
    # so a batch create need not read the input to compare its endpoint.
    sa.Column("endpoint", sa.String(64)),
    sa.Index("ix_gateway_files_owner_seq", "owner", "seq"),
    sa.Index("ix_gateway_files_expires", "expires_at"),
    sa.Index("uq_gateway_files_result", "source_batch", "result_kind", unique=True),
)

placements = sa.Table(
    "gateway_file_placements",
    metadata,
    # Versions 1-2 only: replaced by gateway_copies in version 3.
    sa.Column("file_id", sa.String(64), nullable=False),
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("provider_file_id", sa.String(512), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("file_id", "deployment_id"),
    sa.UniqueConstraint("deployment_id", "provider_file_id", name="uq_placement_native"),
)

copies = sa.Table(
    "gateway_copies",
    metadata,
    # One deployment's copy of an input file: `ready` (provider_file_id set), `pending` (being
    # made) or `failed` (made again from the kept input after `next_attempt_at`).
    sa.Column("file_id", sa.String(64), nullable=False),
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("provider_file_id", sa.String(512)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    # Who is making it now, until when: a dead instance's copy is made by another.
    sa.Column("holder", sa.String(64)),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("file_id", "deployment_id"),
    sa.Index("ix_gateway_copies_retry", "state", "next_attempt_at"),
)

adapter_state = sa.Table(
    "gateway_adapter_state",
    metadata,
    # Small values adapters keep per deployment (`ProviderContext.state`).
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("key", sa.String(256), nullable=False),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("deployment_id", "key"),
)

batches = sa.Table(
    "gateway_batches",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("owner", sa.String(300), nullable=False),  # key_… or user:<user_id>
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("model_group", sa.String(256), nullable=False),
    sa.Column("provider_batch_id", sa.String(512), nullable=False),
    sa.Column("input_file_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("terminal", sa.Boolean, nullable=False),
    _json_column("object", nullable=False),  # last Batch answered, gateway ids only
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_gateway_batches_owner_seq", "owner", "seq"),
)

usage = sa.Table(
    "gateway_usage",
    metadata,
    # One row per batch, written once when the batch is first seen finished: the primary key
    # is what makes "bill each batch exactly once" hold across instances and races.
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(300), nullable=False),  # key_… or user:<user_id>
    sa.Column("model_group", sa.String(256), nullable=False),
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("requests_completed", sa.Integer, nullable=False),
    sa.Column("requests_failed", sa.Integer, nullable=False),
    # NULL when the provider did not report tokens: unknown is not zero.
    sa.Column("input_tokens", sa.BigInteger),
    sa.Column("output_tokens", sa.BigInteger),
    sa.Column("total_tokens", sa.BigInteger),
    sa.Column("recorded_at", sa.BigInteger, nullable=False),
    sa.Index("ix_gateway_usage_owner", "owner"),
)

leases = sa.Table(
    "gateway_batch_leases",
    metadata,
    # Who refreshes an unfinished batch in the background, until when: instances claim rows
    # whose lease has run out, so two never poll the same batch and a dead one's work moves on.
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
    # Since `_batch_poll_schedule`: one row per unfinished batch (written with the batch,
    # deleted when it finishes); `lease_until` is when it is next due, and pollers claim due
    # rows in that order.
    sa.Index("ix_gateway_batch_leases_due", "lease_until"),
)

webhook_deliveries = sa.Table(
    "gateway_webhook_deliveries",
    metadata,
    # The webhook outbox: one row per (finished batch, endpoint of general_settings.webhooks),
    # written when the batch is first seen finished; the primary key is what makes "each event
    # once per endpoint" hold across instances. Instances claim due rows with a lease.
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("endpoint_id", sa.String(64), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    sa.Column("owner", sa.String(300), nullable=False),  # the batch's
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending, delivered, failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("last_status_code", sa.Integer),
    sa.Column("last_error", sa.String(512)),
    sa.Column("enqueued_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("holder", sa.String(64)),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("batch_id", "endpoint_id"),
    sa.Index("ix_gateway_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_gateway_webhook_deliveries_recent", "enqueued_at"),
)

key_webhooks = sa.Table(
    "gateway_key_webhooks",
    metadata,
    # A key's own webhook endpoint (/key/generate metadata `webhook_url`): its owner's batch
    # events go there, signed with `secret`. The secret is kept as is, not hashed: the gateway
    # must sign with it. No route reads it back; it goes when the key does.
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),  # whsec_<base64>
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

runs = sa.Table(
    "gateway_runs",
    metadata,
    # A batch the gateway runs itself, line by line, on a deployment without a batch API
    # (gateway/selfrun): `id` is the provider batch id its batch row names. It covers
    # `total` lines of the kept input from `first_line` (1-based), so a part of a batch
    # is a run too. Counts and tokens grow with every checkpoint.
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("file_id", sa.String(64), nullable=False),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("first_line", sa.Integer, nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("completed", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    # NULL until a response reports tokens: unknown is not zero.
    sa.Column("input_tokens", sa.BigInteger),
    sa.Column("output_tokens", sa.BigInteger),
    sa.Column("total_tokens", sa.BigInteger),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    *(sa.Column(name, sa.BigInteger) for name in (
        "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
        "expired_at", "cancelling_at", "cancelled_at")),
    # Sizes of the result files in the file store once written (NULL: no such file).
    sa.Column("output_bytes", sa.BigInteger),
    sa.Column("error_bytes", sa.BigInteger),
    sa.Column("error_code", sa.String(64)),  # why the run failed as a whole
    sa.Column("error_message", sa.String(512)),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_gateway_runs_deployment", "deployment_id", "status"),
)

run_results = sa.Table(
    "gateway_run_results",
    metadata,
    # The checkpoint of a running run: each finished line's output or error line, written in
    # small transactions; a resumed run skips these lines, and the result files are made from
    # them in line order when the run ends (then the rows go).
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Column("failed", sa.Boolean, nullable=False),
    sa.Column("result", sa.LargeBinary, nullable=False),
    sa.PrimaryKeyConstraint("run_id", "line"),
)

run_leases = sa.Table(
    "gateway_run_leases",
    metadata,
    # Which instance runs a deployment's runs, until when. Per deployment rather than per run:
    # the request limits are the deployment's, so one instance keeping them all is what keeps
    # the whole fleet within them. A dead holder's lease runs out and another instance takes
    # over.
    sa.Column("deployment_id", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
)

batch_parts = sa.Table(
    "gateway_batch_parts",
    metadata,
    # One part of a split batch (gateway/split): `total` lines of the kept input from
    # `first_line` (1-based) run as a batch of their own on `deployment_id`, as the
    # `attempt`-th try (a failed part is tried once more on another deployment). `input_id`
    # is the part's own upstream copy (file-mode providers), `provider_batch_id` its batch
    # there (NULL until submitted); `object` the last Batch its provider reported (native, never
    # shown to tenants). A part being submitted is leased (`holder`, `lease_until`) so that a
    # dead submitter's part is taken over.
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("part", sa.Integer, nullable=False),
    sa.Column("first_line", sa.Integer, nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("model_group", sa.String(256), nullable=False),
    sa.Column("input_id", sa.String(512)),
    sa.Column("provider_batch_id", sa.String(512)),
    sa.Column("status", sa.String(32), nullable=False),  # submitting, or the provider's
    sa.Column("terminal", sa.Boolean, nullable=False),
    _json_column("object", nullable=False),
    sa.Column("holder", sa.String(32), nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.Column("error_code", sa.String(64)),  # why the part failed (at submission)
    sa.Column("error_message", sa.String(512)),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("batch_id", "part"),
)


def _access_columns() -> list[sa.Column[Any]]:
    """What users and teams both have: the model groups they allow, a block, budgets."""
    return [
        _json_column("models", nullable=False),  # list; empty = every model group
        _json_column("metadata", nullable=False),
        sa.Column("blocked", sa.Boolean, nullable=False),
        sa.Column("max_budget", sa.Float),
        sa.Column("budget_duration", sa.String(32)),
        sa.Column("rpm_limit", sa.Integer),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        *_spend_columns(),
    ]


users = sa.Table(
    "gateway_users",
    metadata,
    # LiteLLM's users: a key with a `user_id` has its user's `models` and `blocked` applied too,
    # and its files and batches belong to the user (owner `user:<user_id>`).
    sa.Column("user_id", sa.String(256), primary_key=True),
    sa.Column("user_email", sa.String(256)),
    *_access_columns(),
    sa.Index("ix_gateway_users_email", "user_email"),
)

teams = sa.Table(
    "gateway_teams",
    metadata,
    sa.Column("team_id", sa.String(256), primary_key=True),
    sa.Column("team_alias", sa.String(256)),
    *_access_columns(),
)

team_members = sa.Table(
    "gateway_team_members",
    metadata,
    sa.Column("team_id", sa.String(256), nullable=False),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),  # "admin" | "user"
    sa.PrimaryKeyConstraint("team_id", "user_id"),
    sa.Index("ix_gateway_team_members_user", "user_id"),
)

spend_holds = sa.Table(
    "gateway_spend_holds",
    metadata,
    # A batch being created or running: who it is charged to, its estimated cost (counted
    # against budgets until it is priced) and the prices it will be priced at. Written before
    # the batch goes upstream (batch_id NULL until it is placed), deleted when it is priced.
    sa.Column("hold_id", sa.String(64), primary_key=True),
    sa.Column("batch_id", sa.String(64), unique=True),
    sa.Column("api_key", sa.String(64)),  # the key's token id (NULL: the master key)
    sa.Column("user_id", sa.String(256)),
    sa.Column("team_id", sa.String(256)),
    sa.Column("estimate", sa.Float, nullable=False),
    sa.Column("input_price", sa.Float),  # per token; NULL: unpriced
    sa.Column("output_price", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_gateway_spend_holds_key", "api_key"),
    sa.Index("ix_gateway_spend_holds_user", "user_id"),
    sa.Index("ix_gateway_spend_holds_team", "team_id"),
)

spend_logs = sa.Table(
    "gateway_spend_logs",
    metadata,
    # One row per finished batch, written once when it is priced (LiteLLM's spend logs, a
    # batch where LiteLLM has a request). `spend` NULL: no price known (never a silent 0).
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, unique=True),  # the batch id
    sa.Column("api_key", sa.String(64)),  # the key's token id (NULL: created before spend tracking)
    sa.Column("user_id", sa.String(256)),
    sa.Column("team_id", sa.String(256)),
    sa.Column("model_group", sa.String(256), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger),
    sa.Column("completion_tokens", sa.BigInteger),
    sa.Column("total_tokens", sa.BigInteger),
    sa.Column("spend", sa.Float),
    sa.Column("start_time", sa.Float, nullable=False),  # the batch's creation
    sa.Column("end_time", sa.Float, nullable=False),  # when it was priced
    sa.Index("ix_gateway_spend_logs_start", "start_time"),
    sa.Index("ix_gateway_spend_logs_key", "api_key", "start_time"),
    sa.Index("ix_gateway_spend_logs_user", "user_id", "start_time"),
    sa.Index("ix_gateway_spend_logs_team", "team_id", "start_time"),
)

rate_windows = sa.Table(
    "gateway_rate_windows",
    metadata,
    # Requests per principal (`key:<token>`, `user:<id>`, `team:<id>`) per minute window,
    # counted with one atomic upsert per request, so every instance sees the same count.
    sa.Column("principal", sa.String(300), nullable=False),
    sa.Column("window_start", sa.BigInteger, nullable=False),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("rpm_limit", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("principal", "window_start"),
    sa.Index("ix_gateway_rate_windows_start", "window_start"),
)


# -- rows ------------------------------------------------------------------------------------

_json = msgspec.json.encode
_unjson = msgspec.json.decode

T = TypeVar("T")


def _bool(value: Any) -> bool:
    return bool(value)  # SQLite stores 0/1


class Columns(Generic[T]):
    """The columns of `table` that the dataclass `cls` has as fields (same names, and first, in
    its field order): reads a row into `cls`, writes `cls` as column values. JSON columns are
    decoded and encoded here."""

    def __init__(self, cls: type[T], table: sa.Table, prefix: str = "") -> None:
        self.cls = cls
        self.table = table
        fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        self.names = tuple(name for name in fields if name in table.c)
        if self.names != tuple(fields[:len(self.names)]) or len(self.names) < 2:
            raise TypeError(f"{cls.__name__}: its first fields must be columns of {table.name}")
        self.columns = [table.c[name] for name in self.names]
        self._json = tuple(name for name in self.names if table.c[name].info.get("json"))
        # Reading is on every request: a C itemgetter, then the few columns that need decoding.
        self._get = operator.itemgetter(*(prefix + name for name in self.names))
        self._decode = [
            (i, _unjson if name in self._json else _bool)
            for i, name in enumerate(self.names)
            if name in self._json or isinstance(table.c[name].type, sa.Boolean)
        ]

    def read(self, row: Row, *rest: Any) -> T:
        """`row` as a `cls`; `rest`: the fields after the columns, if any."""
        values = list(self._get(row))
        for i, decode in self._decode:
            values[i] = decode(values[i])
        return self.cls(*values, *rest)

    def values(self, obj: T) -> dict[str, Any]:
        """Every column's value, as written."""
        return self.encode({name: getattr(obj, name) for name in self.names})

    def encode(self, values: dict[str, Any]) -> dict[str, Any]:
        """`values` (some of these columns) as written: JSON columns encoded."""
        for name in self._json:
            if name in values:
                values[name] = _json(values[name]).decode()
        return values

    def labeled(self, alias: sa.FromClause, prefix: str) -> tuple[Columns[T], list[Any]]:
        """These columns of `alias` as `<prefix><name>` (one side of a join), and the
        `Columns` that reads them back."""
        return (Columns(self.cls, self.table, prefix),
                [alias.c[name].label(prefix + name) for name in self.names])


def insert(table: sa.Table, names: Sequence[str]) -> sa.Insert:
    """INSERT of these columns, each value a parameter of the column's name."""
    return table.insert().values({name: sa.bindparam(name) for name in names})


idempotency_keys = sa.Table(
    "gateway_idempotency_keys",
    metadata,
    # `Idempotency-Key` on POST /v1/files and /v1/batches: the first successful answer per
    # (owner, route, key), replayed to a retry with the same body. `holder` and `lease_until`
    # mark a request still running (renewed while it runs, so a crashed one frees the key).
    sa.Column("owner", sa.String(300), nullable=False),
    sa.Column("route", sa.String(32), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # running, done
    sa.Column("fingerprint", sa.String(64)),  # SHA-256 of the body (multipart: no boundary)
    sa.Column("status", sa.Integer),
    sa.Column("body", sa.LargeBinary),
    sa.Column("holder", sa.String(32), nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("owner", "route", "key"),
    sa.Index("ix_gateway_idempotency_keys_created", "created_at"),
)

intents = sa.Table(
    "gateway_intents",
    metadata,
    # Written before each upstream side effect (a copy, a batch create) and removed with the
    # row that records its outcome. One left behind by a dead process (its lease, renewed
    # while the process lives, ran out) is reconciled by the janitor (gateway/recovery.py).
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # copy, batch
    sa.Column("subject", sa.String(64), nullable=False),  # the gateway file or batch id
    sa.Column("deployment_id", sa.String(128), nullable=False),
    sa.Column("input_id", sa.String(256)),  # batch: the copy it was created from
    sa.Column("holder", sa.String(32), nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_gateway_intents_lease", "lease_until"),
    sa.Index("ix_gateway_intents_holder", "holder"),
)

# -- migrations ------------------------------------------------------------------------------

# Versioned migrations: each entry creates what its version adds (tables, or a function for
# changes to existing ones). Append, never edit. Tables are created as defined now, so a
# function adds only what an older database lacks.
Migration = Sequence[sa.Table] | Callable[[Database], Awaitable[None]]


async def _v3_kept_inputs(db: Database) -> None:
    """Copies with a state; result files linked to their batch instead of a provider file."""
    for column in ("request_count", "kept_key", "source_batch", "result_kind"):
        if column not in await columns(db, "gateway_files"):
            kind = files.c[column].type.compile(dialect=db.dialect)
            await db.execute(f"ALTER TABLE gateway_files ADD COLUMN {column} {kind}")
    for index in files.indexes:
        if index.name == "uq_gateway_files_result":
            await db.execute(sa.schema.CreateIndex(index, if_not_exists=True))
    await create(db, copies, adapter_state)
    # Input copies carry over as ready; batch outputs find their batch through its answer.
    await db.execute(
        "INSERT INTO gateway_copies (file_id, deployment_id, provider_file_id, state, attempts,"
        " next_attempt_at, lease_until) SELECT p.file_id, p.deployment_id, p.provider_file_id,"
        " 'ready', 0, 0, 0 FROM gateway_file_placements p JOIN gateway_files f"
        " ON f.id = p.file_id WHERE f.purpose = 'batch'"
    )
    for r in await db.fetch_all(sa.select(batches.c.id, batches.c.object)):
        answer = _unjson(r["object"])
        for key, kind in (("output_file_id", "output"), ("error_file_id", "errors")):
            if isinstance(answer.get(key), str):
                await db.execute(
                    files.update().where(files.c.id == answer[key])
                    .values(source_batch=r["id"], result_kind=kind)
                )
    await db.execute("DROP TABLE gateway_file_placements")


_KEY_COLUMNS_V4 = ("blocked", "max_budget", "budget_duration", "rpm_limit")
_OWNED_TABLES = ("gateway_files", "gateway_batches", "gateway_usage")


async def _v4_users_and_teams(db: Database) -> None:
    """Users, teams and memberships; keys can be blocked and carry budget fields; files and
    batches of a key with a `user_id` belong to that user (owner `user:<user_id>`)."""
    have = await columns(db, "gateway_keys")
    for column in _KEY_COLUMNS_V4:
        if column not in have:
            kind = keys.c[column].type.compile(dialect=db.dialect)
            default = " NOT NULL DEFAULT false" if column == "blocked" else ""
            await db.execute(f"ALTER TABLE gateway_keys ADD COLUMN {column} {kind}{default}")
    if db.is_postgres:  # room for `user:` + a 256-character user_id (SQLite: no limit)
        for table in _OWNED_TABLES:
            await db.execute(f"ALTER TABLE {table} ALTER COLUMN owner TYPE VARCHAR(300)")
    await create(db, users, teams, team_members)
    # The user and team ids keys already carried become users and teams with no restriction.
    now = int(time.time())
    for level, column in ((users, "user_id"), (teams, "team_id")):
        await db.execute(level.insert().from_select(
            [column, "models", "metadata", "blocked", "created_at"],
            sa.select(keys.c[column], sa.literal_column("'[]'"), sa.literal_column("'{}'"),
                      sa.false(), sa.literal_column(str(now)))
            .where(keys.c[column].is_not(None),
                   keys.c[column].not_in(sa.select(level.c[column]))).distinct(),
        ))
    for table in _OWNED_TABLES:
        await db.execute(
            f"UPDATE {table} SET owner = (SELECT 'user:' || k.user_id FROM gateway_keys k"
            f" WHERE k.id = {table}.owner) WHERE owner IN"
            " (SELECT id FROM gateway_keys WHERE user_id IS NOT NULL)"
        )


async def _webhook_outbox(db: Database) -> None:
    """The outbox of batch webhook events (`general_settings.webhooks`)."""
    await create(db, webhook_deliveries)


async def _file_expiry(db: Database) -> None:
    """Files that expire when their uploader asked (`expires_after`)."""
    if "expires_at" not in await columns(db, "gateway_files"):
        await db.execute("ALTER TABLE gateway_files ADD COLUMN expires_at BIGINT")
    for index in files.indexes:
        if index.name == "ix_gateway_files_expires":
            await db.execute(sa.schema.CreateIndex(index, if_not_exists=True))


async def _file_endpoint(db: Database) -> None:
    """The endpoint of an input file's lines, kept with the file."""
    if "endpoint" not in await columns(db, "gateway_files"):
        await db.execute("ALTER TABLE gateway_files ADD COLUMN endpoint VARCHAR(64)")


async def _spend_budgets_rpm(db: Database) -> None:
    """Spend on keys, users and teams, spend holds and logs, rate-limit windows."""
    for table in (keys, users, teams):
        have = await columns(db, table.name)
        for column in ("spend", "budget_reset_at"):
            if column not in have:
                kind = table.c[column].type.compile(dialect=db.dialect)
                default = " NOT NULL DEFAULT 0" if column == "spend" else ""
                await db.execute(f"ALTER TABLE {table.name} ADD COLUMN {column} {kind}{default}")
    await create(db, spend_holds, spend_logs, rate_windows)
    if db.is_postgres:
        # Counters of the current minute: not worth a WAL flush on every request (measured:
        # 2 ms per request logged, 0.5 ms unlogged); a crash just forgets this minute's counts.
        await db.execute("ALTER TABLE gateway_rate_windows SET UNLOGGED")


async def _gateway_runs(db: Database) -> None:
    """Batches the gateway runs itself: runs, their checkpointed results, deployment leases."""
    await create(db, runs, run_results, run_leases)


async def _batch_poll_schedule(db: Database) -> None:
    """The background refresh's schedule: every unfinished batch has a lease row (due now if
    it had none), finished batches none, and due rows are found through an index."""
    for index in leases.indexes:
        await db.execute(sa.schema.CreateIndex(index, if_not_exists=True))
    await db.execute(
        "DELETE FROM gateway_batch_leases WHERE batch_id IN"
        " (SELECT id FROM gateway_batches WHERE terminal)"
    )
    await db.execute(
        "INSERT INTO gateway_batch_leases (batch_id, holder, lease_until) SELECT b.id, '', 0"
        " FROM gateway_batches b WHERE NOT b.terminal AND NOT EXISTS"
        " (SELECT 1 FROM gateway_batch_leases l WHERE l.batch_id = b.id)"
    )


async def _key_webhooks(db: Database) -> None:
    """Per-key webhook endpoints (/key/generate metadata `webhook_url`) and their secrets."""
    await create(db, key_webhooks)


async def _batch_parts(db: Database) -> None:
    """Split batches: the parts of a batch run on several deployments at once."""
    await create(db, batch_parts)


MIGRATIONS: list[Migration] = [
    (keys, files, placements, batches),
    (usage, leases),
    _v3_kept_inputs,
    _v4_users_and_teams,
    _webhook_outbox,
    (idempotency_keys,),
    (intents,),
    _spend_budgets_rpm,
    _file_expiry,
    _batch_poll_schedule,
    _gateway_runs,
    _key_webhooks,
    _batch_parts,
    _file_endpoint,
]


async def migrate(db: Database) -> None:
    """Bring the schema to the last version, in one transaction."""
    async with db.transaction():
        if db.is_postgres:
            # Two instances starting together must not both run a migration. (SQLite: the
            # transaction holds the write lock from its start.)
            await db.execute("SELECT pg_advisory_xact_lock(7401)")
        await db.execute(sa.schema.CreateTable(schema_version, if_not_exists=True))
        current = await db.fetch_val(
            sa.select(sa.func.coalesce(sa.func.max(schema_version.c.version), 0))
        )
        for version, step in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            if callable(step):
                await step(db)
            else:
                await create(db, *step)
            await db.execute(
                schema_version.insert().values(version=version, applied_at=int(time.time()))
            )


async def create(db: Database, *tables: sa.Table) -> None:
    for table in tables:
        await db.execute(sa.schema.CreateTable(table, if_not_exists=True))
        for index in table.indexes:
            await db.execute(sa.schema.CreateIndex(index, if_not_exists=True))


async def columns(db: Database, table: str) -> set[str]:
    if db.is_postgres:
        rows = await db.fetch_all(
            "SELECT column_name FROM information_schema.columns WHERE table_name = :t",
            {"t": table},
        )
        return {r["column_name"] for r in rows}
    return {r["name"] for r in await db.fetch_all(f"PRAGMA table_info({table})")}
