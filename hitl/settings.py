"""Settings read from the environment, in groups, built once by a cached ``get_settings()``.

A missing or invalid value refuses to start with SEC-040 naming the variable.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hitl.errors import ConfigurationError
from hitl.messages import ApprovalPolicy
from hitl.models import Price


def _optional_percent(value: Any) -> Any:
    """``2``, ``2.0`` or ``2%``; empty (compose passes an unset variable as "") is unset."""
    if isinstance(value, str):
        value = value.strip().removesuffix("%").strip()
        return value or None
    return value


class HITLSettings(BaseSettings):
    """The approval rules (``HITL_*``)."""

    model_config = SettingsConfigDict(env_prefix="HITL_", extra="ignore")

    enabled: bool = True
    timeout_seconds: Annotated[int, Field(gt=0)] = 300
    slippage_max_percent: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=8)] = (
        Decimal("0.5")
    )
    allowed_operators: Annotated[frozenset[str], NoDecode]
    data_dir: Path = Path("data")
    keys_dir: Path | None = None
    """The keyrings' folder (``HITL_KEYS_DIR``); default ``<HITL_DATA_DIR>/keys``."""
    hub_url: str = "http://127.0.0.1:8000"
    """Where operators open the approval page; deep links point here."""
    reconcile_seconds: Annotated[int, Field(gt=0)] = 60
    """How often the database and Temporal are reconciled (``HITL_RECONCILE_SECONDS``): a
    periodic pass looks at the approval workflows terminated, failed, timed out or cancelled
    since the last one."""
    reconcile_full_seconds: Annotated[int, Field(gt=0)] = 3600
    """How often a pass is full, every open row against every running workflow
    (``HITL_RECONCILE_FULL_SECONDS``; a worker's start always runs one). What only it finds is
    listed in docs/reliability.md."""
    audit_verify_seconds: Annotated[int, Field(gt=0)] = 300
    """How often the worker verifies what was appended to the audit chain
    (``HITL_AUDIT_VERIFY_SECONDS``; also once at start)."""
    remind_at: Annotated[Decimal, Field(ge=0, lt=100)] = Decimal(50)
    """When an undecided approval is reminded, in percent of its window (``HITL_REMIND_AT``,
    ``50`` or ``50%``; 0 for never)."""
    escalate_at: Annotated[Decimal, Field(ge=0, lt=100)] = Decimal(80)
    """When an undecided approval is escalated, in percent of its window (``HITL_ESCALATE_AT``;
    0 for never)."""
    four_eyes_risk_pct: Annotated[
        Decimal | None, Field(ge=0, lt=100), BeforeValidator(_optional_percent)
    ] = None
    """Above this risk (``HITL_FOUR_EYES_RISK_PCT``, e.g. ``2.0`` or ``2%``: strictly above) an
    approval needs two different operators; unset or empty: one operator always suffices. The
    worker's setting decides, never the caller's (it travels in the worker's policy)."""
    discord_preview_seconds: Annotated[int, Field(ge=0)] = 30
    """How often the Discord bot refreshes the market preview in pending approvals' messages
    (``HITL_DISCORD_PREVIEW_SECONDS``; 0: never, the preview stays as of posting)."""
    temporal_ui_url: str = ""
    """The Temporal Web UI the page, Discord and the workflow's details link to
    (``HITL_TEMPORAL_UI_URL``; ``make run`` sets its dev server's); empty for no links."""
    rate_limit_storage: SecretStr = SecretStr("")
    """Where the API's rate limits count (``HITL_RATE_LIMIT_STORAGE``): empty for each process's
    memory, ``redis://host:6379/0`` for a Redis shared by every API process."""

    @field_validator("allowed_operators", mode="before")
    @classmethod
    def _split_operators(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not value:
            raise ValueError("must name at least one operator")
        return value

    @field_validator("remind_at", "escalate_at", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        return value.strip().removesuffix("%").strip() if isinstance(value, str) else value


class DatabaseSettings(BaseSettings):
    """Where approvals are stored (``DATABASE_URL``); empty means the embedded SQLite file."""

    model_config = SettingsConfigDict(env_prefix="DATABASE_", extra="ignore")

    url: str = ""


class TemporalSettings(BaseSettings):
    """How to reach Temporal (``TEMPORAL_*``)."""

    model_config = SettingsConfigDict(env_prefix="TEMPORAL_", extra="ignore")

    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str = "hitl-approvals"
    ui_port: Annotated[int, Field(ge=1, le=65535)] = 8233
    """The Web UI port of the embedded dev server started by ``make run``."""
    ui_loopback_codec: bool = False
    """The embedded UI (its loopback origin, from this machine) may decode payloads at /codec
    without a token; ``make run`` sets it when it starts the dev server. Never in production."""
    # Transport security (workflows/connection.py); empty means unset. Paths to PEM files.
    tls_ca: str = ""
    """The CA that signed Temporal's certificate; any TLS variable turns TLS on."""
    tls_cert: str = ""
    """The client certificate (mTLS), with ``TEMPORAL_TLS_KEY``."""
    tls_key: str = ""
    """The client certificate's unencrypted private key."""
    tls_server_name: str = ""
    """The name expected on Temporal's certificate, when it differs from the address."""
    api_key: SecretStr = SecretStr("")
    """An API key (e.g. Temporal Cloud); implies TLS with the system's roots."""


class MarketDataSettings(BaseSettings):
    """Where current prices come from (``MARKET_DATA_*``); no URL means the simulated market."""

    model_config = SettingsConfigDict(env_prefix="MARKET_DATA_", extra="ignore")

    url: str = ""
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0


class MarketSettings(BaseSettings):
    """Which market the worker quotes (``HITL_MARKET``) and the paper market's parameters."""

    model_config = SettingsConfigDict(env_prefix="HITL_", extra="ignore")

    market: Literal["", "simulated", "http"] = ""
    """``simulated`` (the paper market), ``http`` (``MARKET_DATA_URL``), or empty: http when
    ``MARKET_DATA_URL`` is set, the paper market only on the embedded default (SQLite)."""
    market_prices: Annotated[dict[str, Price], NoDecode] = Field(default_factory=dict)
    """Starting prices, ``EUR/USD=1.1612,XAU/USD=2650.5``; others start at their first proposal."""
    market_volatility: Annotated[Decimal, Field(ge=0, le=Decimal("0.01"))] = Decimal("0.0001")
    """The paper market's relative standard deviation over one second (it grows with √t)."""
    market_seed: int = 0
    """The paper market's random path; every worker must share it to quote alike."""

    @field_validator("market", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("market_prices", mode="before")
    @classmethod
    def _split_prices(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        prices: dict[str, str] = {}
        for entry in (part.strip() for part in value.split(",")):
            instrument, sep, price = entry.partition("=")
            if entry and (not sep or not instrument.strip()):
                raise ValueError(f"{entry!r} is not INSTRUMENT=PRICE")
            if entry:
                prices[instrument.strip()] = price.strip()
        return prices


class WorkerSettings(BaseSettings):
    """The Temporal worker process (``HITL_WORKER_*``)."""

    model_config = SettingsConfigDict(env_prefix="HITL_WORKER_", extra="ignore")

    metrics_host: str = "127.0.0.1"
    """Where the worker serves /metrics; 0.0.0.0 in a container so Prometheus can scrape it."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9464
    max_cached_workflows: Annotated[int, Field(ge=0)] = 1000


class ApiSettings(BaseSettings):
    """The HTTP API process (``HITL_API_*``)."""

    model_config = SettingsConfigDict(env_prefix="HITL_API_", extra="ignore")

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    tokens: SecretStr = SecretStr("")
    """Development and test tokens: ``principal:role:token`` entries, comma-separated."""
    decision_timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0
    """How long a decision may take before the API answers 503 (and the decision lapses)."""
    rate_limit: str = "10/second;120/minute"
    """Per-principal request limit, in the ``limits`` library's notation."""
    address_rate_limit: str = "50/second;1000/minute"
    """Per client address, counted before any token is looked up (``limits`` notation)."""


class DiscordSettings(BaseSettings):
    """The Discord bot and notifier (``DISCORD_*``); without a token, the console notifier."""

    # Compose passes unset variables as "": read them as unset (no Discord), not as invalid.
    model_config = SettingsConfigDict(env_prefix="DISCORD_", extra="ignore", env_ignore_empty=True)

    bot_token: SecretStr = SecretStr("")
    channel_id: int | None = None
    """The channel approval messages are posted to."""
    api_base_url: str = ""
    """Discord's REST base URL; empty means discord.py's default. Tests point it at a fake."""
    gateway_url: str = ""
    """Discord's gateway (websocket) URL; empty means the one ``GET /gateway/bot`` names when
    ``api_base_url`` is set, else discord.py's default. Tests point it at a fake."""
    operators: str = ""
    """``discord_user_id:operator_id`` pairs, comma-separated: who may decide by button."""
    escalation_role_id: int | None = None
    """The role an escalation mentions (``DISCORD_ESCALATION_ROLE_ID``): the one mention any
    message of the gateway allows."""

    @property
    def enabled(self) -> bool:
        """Whether Discord is configured."""
        return bool(self.bot_token.get_secret_value())


class Settings(BaseModel):
    """All settings of one gateway process."""

    def policy(self) -> ApprovalPolicy:
        """The approval policy this process's worker applies (never a starter's)."""
        return ApprovalPolicy(
            enabled=self.hitl.enabled,
            timeout_seconds=self.hitl.timeout_seconds,
            slippage_max_percent=self.hitl.slippage_max_percent,
            allowed_operators=self.hitl.allowed_operators,
            remind_at_percent=self.hitl.remind_at,
            escalate_at_percent=self.hitl.escalate_at,
            four_eyes_risk_pct=self.hitl.four_eyes_risk_pct,
        )

    hitl: HITLSettings
    database: DatabaseSettings
    temporal: TemporalSettings
    market_data: MarketDataSettings
    market: MarketSettings = Field(default_factory=MarketSettings)
    worker: WorkerSettings
    api: ApiSettings
    discord: DiscordSettings

    @property
    def keys_dir(self) -> Path:
        """The folder holding the keyrings (``hitl.keys``): ``HITL_KEYS_DIR``, else the data
        folder's ``keys``."""
        return self.hitl.keys_dir or self.hitl.data_dir / "keys"

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL; the embedded default is an SQLite file in the data folder."""
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{(self.hitl.data_dir / 'hitl.db').resolve()}"


GroupT = TypeVar("GroupT", bound=BaseSettings)


def _load(group: type[GroupT]) -> GroupT:
    try:
        return group()
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        prefix = str(group.model_config.get("env_prefix", ""))
        variable = f"{prefix}{field}".upper()
        problem = "is required" if error["type"] == "missing" else f"is invalid: {error['msg']}"
        raise ConfigurationError(variable, problem) from None


def load_settings() -> Settings:
    """Read every group from the environment now; raises ConfigurationError (SEC-040)."""
    return Settings(
        hitl=_load(HITLSettings),
        database=_load(DatabaseSettings),
        temporal=_load(TemporalSettings),
        market_data=_load(MarketDataSettings),
        market=_load(MarketSettings),
        worker=_load(WorkerSettings),
        api=_load(ApiSettings),
        discord=_load(DiscordSettings),
    )


_GROUPS: tuple[type[BaseSettings], ...] = (
    HITLSettings,
    DatabaseSettings,
    TemporalSettings,
    MarketDataSettings,
    MarketSettings,
    WorkerSettings,
    ApiSettings,
    DiscordSettings,
)


def known_variables() -> frozenset[str]:
    """Every environment variable the settings read (for checking deployment files)."""
    return frozenset(
        f"{group.model_config.get('env_prefix', '')}{name}".upper()
        for group in _GROUPS
        for name in group.model_fields
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; tests call ``get_settings.cache_clear()`` to re-read."""
    return load_settings()
