"""Configuration: one ``Settings`` object read from ``DEEPRESEARCH_*`` variables.

Built once at start-up and passed in; nothing here runs at import. The agent's
part of it is the immutable ``AgentTemplate``; each request derives its own
``GenerationSettings`` from it, so nothing one request sets reaches another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from deepresearch.errors import ConfigurationError

DEFAULT_CORPUS = Path("../shared/data/corpus")

SearchBackendName = Literal["local", "pubmed", "europepmc"]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything an operator can set. Field ``x`` is read from ``DEEPRESEARCH_X``."""

    model_config = SettingsConfigDict(
        env_prefix="DEEPRESEARCH_", frozen=True, extra="ignore", validate_default=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=5006, ge=0, le=65535)

    # LLM backends; unset means the offline evidence mode.
    llm_url: Annotated[list[str], NoDecode] = Field(default_factory=list)
    llm_model: str | None = None
    llm_api_key: str = "EMPTY"
    llm_timeout: float = Field(default=120.0, gt=0, description="seconds of backend silence")
    # One budget per model call: retries after the first attempt, and seconds in all.
    llm_retries: int = Field(default=2, ge=0, le=10)
    llm_retry_seconds: float = Field(default=600.0, gt=0)
    # How often each backend's call limit is reconsidered (``auto``) and health probed.
    llm_control_seconds: float = Field(default=2.0, gt=0)

    # Admission control. ``auto``: session slots follow the sum of the backends'
    # adaptive call limits, within MIN..MAX; a number is a fixed cap.
    max_concurrent: int | Literal["auto"] = Field(default="auto")
    max_concurrent_min: int = Field(default=2, ge=1, le=1024)
    max_concurrent_max: int = Field(default=64, ge=1, le=1024)
    max_queue: int = Field(default=100, ge=0, le=100_000)
    queue_timeout: float = Field(default=300.0, gt=0)
    disconnect_grace: float = Field(default=60.0, ge=0)

    # The agent: its protocol and budgets.
    agent_protocol: Literal["tongyi", "native"] = "tongyi"  # native: the API's `tools` field
    context_tokens: int = Field(default=110_000, ge=2048)
    max_rounds: int = Field(default=100, ge=1, le=1000)
    max_run_seconds: float = Field(default=1800.0, gt=0)
    max_question_chars: int = Field(default=4000, ge=1)

    # Storage, corpus and search.
    data_dir: Path = Path(".deepresearch")
    corpus: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    search: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["auto"])
    retention_days: float = Field(default=30.0, gt=0)
    retention_max_sessions: int = Field(default=10_000, ge=1)
    # A session a stopped or crashed server left queued or processing goes on when it
    # starts again (from its last round's checkpoint); off: it is marked failed.
    resume_on_start: bool = True

    # Live literature sources behind `search` (NCBI asks for a tool name and an email).
    ncbi_api_key: str | None = None
    ncbi_tool: str = "deepresearch"
    ncbi_email: str | None = None
    probe_seconds: float = Field(default=2.0, gt=0)

    # Tools.
    uploads_dir: Path | None = None  # parse_file reads only here; default DATA_DIR/uploads
    python_timeout: float = Field(default=30.0, gt=0)
    python_memory_mb: int = Field(default=512, ge=64)
    # A server not running as root would run code as its own user: refused unless set.
    python_same_user: bool = False
    visit_timeout: float = Field(default=20.0, gt=0)
    visit_max_bytes: int = Field(default=5_000_000, ge=1000)

    # Clients. Keys: each entry of API_KEYS is a `user` key; a keys file (TOML) names
    # keys and gives them roles (`user`, `admin`).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    keys_file: Path | None = None
    # Browser origins allowed to call the API (the note's React front end is served
    # from its own origin, e.g. http://localhost:3000); empty (the default): no CORS.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Host header values accepted (DNS rebinding); empty: with keys off, only loopback
    # names and DEEPRESEARCH_HOST; with keys on, any. "*" accepts any.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    # Request bounds: body size (413 past it, counted while reading), JSON nesting,
    # seconds to send the request headers and to send the body.
    max_body_bytes: int = Field(default=1_000_000, ge=1024, le=100_000_000)
    max_json_depth: int = Field(default=32, ge=2, le=1000)
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    # Per-key limits when keys are on (0: no limit): requests a minute, sessions
    # running at once, sessions waiting in the queue. Beyond them: 429 + Retry-After.
    rate_per_minute: int = Field(default=120, ge=0, le=1_000_000)
    max_running_per_key: int = Field(default=0, ge=0, le=100_000)
    max_queued_per_key: int = Field(default=20, ge=0, le=100_000)

    # Logs: questions may be medical data, so they are not logged unless asked.
    log_questions: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Logs go to standard output unless a file is named (reopened when logrotate moves it).
    log_file: Path | None = None

    # Distributed mode (docs/deploy.md): a Redis URL turns it on. API nodes (`serve`)
    # admit, enqueue and stream; `deepresearch worker` processes run the sessions.
    redis_url: str | None = None
    redis_prefix: str = Field(default="deepresearch", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # A session whose worker died is taken over by another within this many seconds.
    recovery_seconds: float = Field(default=30.0, ge=4, le=3600)
    # A session whose runs keep dying (worker deaths, failed runs) is given up after
    # this many attempts: it ends with one `error` saying so.
    job_attempts: int = Field(default=10, ge=1, le=1000)
    # SIGTERM on a worker: running sessions get this long to finish, then are handed
    # back (their checkpoints kept) to be resumed elsewhere.
    shutdown_grace: float = Field(default=30.0, ge=0, le=86_400)

    @field_validator(
        "llm_url", "search", "api_keys", "cors_origins", "allowed_hosts", mode="before"
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("corpus", mode="before")
    @classmethod
    def _corpus_paths(cls, value: object) -> object:
        value = _split_commas(value)
        if value == []:
            return [DEFAULT_CORPUS] if DEFAULT_CORPUS.exists() else []
        return value

    @field_validator("llm_url")
    @classmethod
    def _urls_are_http(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return [url.rstrip("/") for url in urls]

    @field_validator("search")
    @classmethod
    def _known_search_backends(cls, names: list[str]) -> list[str]:
        allowed = {"auto", "local", "pubmed", "europepmc"}
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise ValueError(f"unknown search backend(s) {unknown}; choose from {sorted(allowed)}")
        return names or ["auto"]

    @field_validator("max_concurrent")
    @classmethod
    def _cap_in_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 1024:
            raise ValueError("must be 'auto' or a number from 1 to 1024")
        return value

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Settings:
        if self.max_concurrent_min > self.max_concurrent_max:
            raise ValueError(
                "DEEPRESEARCH_MAX_CONCURRENT_MIN must not exceed DEEPRESEARCH_MAX_CONCURRENT_MAX"
            )
        return self

    @property
    def adaptive(self) -> bool:
        return self.max_concurrent == "auto"

    @property
    def distributed(self) -> bool:
        return self.redis_url is not None

    @property
    def offline(self) -> bool:
        return not self.llm_url

    @property
    def database_path(self) -> Path:
        return self.data_dir / "sessions.sqlite"

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.sqlite"

    @property
    def uploads_path(self) -> Path:
        return self.uploads_dir or self.data_dir / "uploads"

    def agent_template(self) -> AgentTemplate:
        return AgentTemplate(
            protocol=self.agent_protocol,
            max_rounds=self.max_rounds,
            max_run_seconds=self.max_run_seconds,
            context_tokens=self.context_tokens,
        )


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus explicit overrides, e.g. CLI flags) or refuse to start."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"DEEPRESEARCH_{'_'.join(str(p) for p in err['loc'][:1]).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from exc


class GenerationSettings(BaseModel):
    """Sampling settings for one request; defaults are the model's trained ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=0.85, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    presence_penalty: float = Field(default=1.1, ge=-2.0, le=2.0)
    max_tokens: int = Field(default=8192, ge=1, le=131_072)


class AgentTemplate(BaseModel):
    """The read-only agent configuration every request starts from."""

    model_config = ConfigDict(frozen=True)

    generation: GenerationSettings = GenerationSettings()
    protocol: Literal["tongyi", "native"] = "tongyi"
    max_rounds: int = 100
    max_run_seconds: float = 1800.0
    context_tokens: int = 110_000  # prompt + reply must fit in this

    def for_request(self, **overrides: float | int | None) -> AgentTemplate:
        """A copy with this request's generation settings; the template is untouched."""
        chosen = {key: value for key, value in overrides.items() if value is not None}
        generation = GenerationSettings.model_validate(self.generation.model_dump() | chosen)
        return self.model_copy(update={"generation": generation})
