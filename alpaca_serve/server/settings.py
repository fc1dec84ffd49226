"""Server configuration: one pydantic-settings class, read from `ALPACA_*` environment variables.

Usage: `ServerSettings()` reads the environment; `ServerSettings(port=9000)` overrides it.
Unsafe or inconsistent values are rejected here, at load, not when a request arrives.
The two settings that locate the feedback store are declared once, in
`alpaca_serve.feedback.settings`, and shared with `StoreSettings` (what `alpaca-export` reads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from alpaca_serve.core.project_model import (
    PROJECT_MODEL_DIR,
    PROJECT_MODEL_NAME,
    project_model_available,
)
from alpaca_serve.feedback import DEFAULT_DATA_DIR, default_database_url
from alpaca_serve.feedback.recorder import MAX_PENDING
from alpaca_serve.feedback.settings import DatabaseUrl, DataDir, none_if_blank
from alpaca_serve.server.default_model import DEFAULT_MODEL_NAME
from alpaca_serve.server.keys import KeysFileError, parse_keys_file, split_keys


def parse_adapter_list(text: str | None) -> dict[str, Path]:
    """`name=path,name=path` as {name: path}; ValueError naming a malformed entry."""
    named: dict[str, Path] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        name, sep, path = (part.strip() for part in entry.partition("="))
        if not sep or not name or not path:
            raise ValueError(f"adapters: {entry.strip()!r} is not name=path")
        if name in named:
            raise ValueError(f"adapters: the name {name!r} is given twice")
        named[name] = Path(path)
    return named


class FilterSettings(BaseModel):
    """One entry of ALPACA_FILTERS."""

    model_config = ConfigDict(extra="forbid")

    factory: str = Field(pattern=r"^[\w.]+:\w+$", description="package.module:factory")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments")
    name: str | None = Field(default=None, description="name in logs and metrics")
    fail_open: bool = Field(
        default=False, description="allow, instead of block, when the filter fails"
    )
    timeout_s: float = Field(default=2.0, gt=0, description="limit for an async hook, in seconds")


class ServerSettings(BaseSettings):
    """Every setting is also an environment variable: `port` is `ALPACA_PORT`, and so on."""

    model_config = SettingsConfigDict(env_prefix="ALPACA_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on")
    model: Path | None = Field(
        default=None,
        description="Hugging Face folder of a LLaMA-family model to serve; "
        "empty: the bundled SmolLM2-135M-Instruct",
    )
    model_name: str | None = Field(
        default=None, description="name reported by /info and in metrics (default: the folder name)"
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "alpaca-serve",
        description="where the bundled default model is converted to, once",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="where the engine runs; auto: cuda when a GPU is visible, else cpu",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="weights and activations; auto: bfloat16, but float32 for an eager engine "
        "on cpu (bfloat16 is emulated there: slower than float32 unless compiled)",
    )
    max_model_len: int = Field(
        default=2048, ge=16, description="context length: prompt plus new tokens, at most"
    )
    max_new_tokens_limit: int = Field(
        default=1024, ge=1, description="largest max_new_tokens a request may ask for"
    )
    default_max_new_tokens: int = Field(
        default=256, ge=1, description="max_new_tokens when a request does not say"
    )
    preload: bool = Field(
        default=True,
        description="alpaca-serve restarts itself once with tcmalloc and Intel's OpenMP runtime "
        "in LD_PRELOAD (when installed: make setup does it), as vLLM's CPU guide says; "
        "false: as started",
    )
    enforce_eager: bool | Literal["auto"] = Field(
        default="auto",
        description="auto: the compiled engine (1.1-1.3x faster decoding on CPU) when its cache "
        "is warm for this model and these engine settings, else the eager one (loads in "
        "seconds) while alpaca-serve fills the cache in the background for the next start; "
        "true: always eager; false: always compiled (the first start compiles for minutes)",
    )
    compile_in_background: bool = Field(
        default=True,
        description="with enforce_eager auto and a cold cache, alpaca-serve compiles the model "
        "once in a background process at the lowest CPU priority (stopped at shutdown, resumed "
        "at the next start), so that the next start is compiled; false: no background work",
    )
    compile_cache_dir: Path | None = Field(
        default=None,
        description="where a compiled engine (enforce_eager false) keeps vLLM's and torch's "
        "compilation caches, so that later starts reuse them; empty: `compile/` in cache_dir",
    )
    speculative: Literal["off", "ngram"] = Field(
        default="off",
        description="speculative decoding: off, or ngram (prompt lookup: the engine proposes the "
        "tokens that followed the last few generated ones where they occur earlier in the prompt "
        "or answer, and the model checks them all in one step; greedy answers stay the same, "
        "token for token); pays where the answer repeats its input (rewrite, summarise, extract)",
    )
    speculative_tokens: int = Field(
        default=4,
        ge=1,
        le=16,
        description="with speculative ngram: tokens proposed per step (vLLM's "
        "num_speculative_tokens)",
    )
    prompt_lookup_max: int = Field(
        default=4,
        ge=1,
        le=16,
        description="with speculative ngram: the longest run of recent tokens looked up in the "
        "prompt and answer so far",
    )
    prompt_lookup_min: int = Field(
        default=2,
        ge=1,
        le=16,
        description="with speculative ngram: the shortest run of recent tokens looked up (at most "
        "prompt_lookup_max); shorter runs propose more often and are accepted less",
    )
    kv_block_size: int | None = Field(
        default=None,
        ge=16,
        description="tokens per KV cache block (vLLM's block_size); vLLM's prefix cache shares "
        "whole blocks between requests; empty: 32 on cpu (vLLM's own there is 128), so that the "
        "fixed preamble of the Alpaca prompt with an input (33 tokens with the default model) "
        "fills a block every such request shares; vLLM's own on cuda; a multiple of 16, and of "
        "32 on cpu",
    )
    cpu_kv_cache_gib: float = Field(default=2.0, gt=0, description="KV cache size on cpu, in GiB")
    cpu_reserved_cores: int = Field(
        default=0, ge=0, description="cores kept out of the cpu engine's compute threads"
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="share of GPU memory the engine may take on cuda"
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one model is split across")
    max_num_seqs: int = Field(default=64, ge=1, description="requests the engine batches together")
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="a request still generating after this long is aborted"
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="on SIGTERM, how long open requests may finish before abort"
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="largest request body, in bytes (413 past it)"
    )
    max_prompt_chars: int = Field(
        default=100_000,
        ge=1,
        description="longest instruction + input, or raw prompt, in characters",
    )
    max_schema_bytes: int = Field(
        default=65_536,
        ge=64,
        description="largest JSON schema a request may constrain its answer with (json_schema, "
        "response_format), in bytes of compact JSON",
    )
    max_schema_depth: int = Field(
        default=64, ge=2, description="deepest nesting of objects and arrays in a JSON schema"
    )
    max_schema_properties: int = Field(
        default=1_000,
        ge=1,
        description="most property names in a JSON schema, all its `properties` counted together",
    )
    prepare_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="longest a request's JSON schema may take to check and compile (off the "
        "event loop); past it, the request is refused",
    )
    max_concurrent: int = Field(
        default=64, ge=1, description="requests generating at once; more wait in the queue"
    )
    max_queue: int = Field(
        default=256, ge=0, description="requests waiting for a slot; past it, 429 with Retry-After"
    )
    max_choices: int = Field(
        default=4,
        ge=1,
        description="most choices (`n`) one OpenAI request may ask for; each takes a slot",
    )
    structured_output_disable_whitespace: bool = Field(
        default=False,
        description="JSON answers (response_format, json_schema) without white space between "
        "tokens (vLLM's disable_any_whitespace; pins the xgrammar backend); helps small models "
        "that otherwise fill the budget with white space",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="debug, info, warning or error; prompts and answers are never logged",
    )
    data_dir: DataDir = DEFAULT_DATA_DIR
    database_url: DatabaseUrl = None
    log_retention_days: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="days the generation log keeps prompts and answers: older ones are emptied "
        "(instruction, input, prompt, answer, filter verdicts) at start and then hourly, and "
        "left out of exports; their ratings and votes stay, so counts and leaderboards do not "
        "change; a positive number (fractions allowed); empty: kept forever",
    )
    generation_backlog: int = Field(
        default=MAX_PENDING,
        ge=1,
        description="generation log entries kept in memory while the feedback store cannot take "
        "them (full or down), retried until it can; past this many (or 64 MiB) the oldest are "
        "dropped and counted in alpaca_generation_log_dropped_total",
    )
    ui: bool = Field(default=True, description="mount the Gradio demo at /ui")
    api_keys: str | None = Field(
        default=None,
        description="comma-separated user API keys; when any key is set (here, in admin_keys "
        "or in api_keys_file), every route but /health and /ready needs "
        "`Authorization: Bearer <key>`, and admin routes an admin key",
    )
    admin_keys: str | None = Field(
        default=None,
        description="comma-separated admin keys: they may call every route, user keys all but "
        "the admin ones (adapters, imports, everyone's feedback, deletion, exclusion, protected "
        "metrics; see the operations docs), and only they see /info's folder paths and training "
        "arguments; with no key configured at all, every route answers everyone but /admin/*, "
        "which answers callers on this machine (loopback) only",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="file of API keys, one a line: KEY [role=user|admin] [name=NAME] (`#` "
        "starts a comment); read again when it changes, no restart needed",
    )
    metrics_require_key: bool = Field(default=False, description="also require a key on /metrics")
    ui_require_key: bool = Field(
        default=False,
        description="require `Authorization: Bearer <key>` on every /ui request as on the API "
        "(for a gateway that adds it; a browser alone cannot)",
    )
    max_in_flight_per_key: int | None = Field(
        default=None,
        ge=1,
        description="with API keys set: requests one key may have open at once, streams "
        "included (429 past it); default: half of max_concurrent + max_queue, so that no one "
        "key holds every generation slot and queue place",
    )
    ui_public: bool = Field(
        default=False,
        description="with API keys set: serve the demo at /ui without a login (a public demo). "
        "Off, the demo asks for a login whose password is an API key. Either way the demo's "
        "calls to the API carry a key of its own, limited to ui_rate_limit_per_minute",
    )
    ui_rate_limit_per_minute: int = Field(
        default=120,
        ge=1,
        description="with API keys set: requests a minute the demo's own key may make (all the "
        "demo's visitors together)",
    )
    rate_limit_per_minute: int | None = Field(
        default=None, ge=1, description="requests a minute allowed per API key (bursts up to that)"
    )
    feedback_per_session_per_minute: int = Field(
        default=30,
        ge=0,
        description="POST /feedback calls a minute per feedback session (bursts up to that; 429 "
        "with Retry-After past it); admin keys (and local callers when no key is set) are not "
        "limited; 0: no limit",
    )
    feedback_per_client_per_minute: int = Field(
        default=120,
        ge=0,
        description="POST /feedback calls a minute per client: per API key, per visitor of the "
        "demo, per address when no key is set (behind a proxy, the proxy's); admin keys and "
        "local callers without keys are not limited; 0: no limit",
    )
    cors_origins: str | None = Field(
        default=None,
        description="comma-separated origins allowed to call the API from a browser; `*` for "
        "any (then without credentials)",
    )
    blocklist: Path | None = Field(
        default=None,
        description="blocklist file for the built-in content filter (one entry a line: "
        "`phrase`, `category: phrase` or `category: re:pattern`)",
    )
    adapters_dir: Path | None = Field(
        default=None,
        description="folder of LoRA adapters: each sub-folder holding a PEFT adapter "
        "(adapter_config.json and adapter_model.safetensors, or alpaca-train's output with its "
        "adapter/ folder) is served as a model named after it; watched, so adapters copied in "
        "later are served without a restart",
    )
    adapters: str | None = Field(
        default=None,
        description="more LoRA adapters to serve, as `name=path,name=path`; their folders are "
        "watched like adapters_dir's",
    )
    project_model: bool = Field(
        default=True,
        description=f"with the default model (model unset): also serve the project's Alpaca "
        f"model, the LoRA adapter of the default model that ships in the package "
        f"(alpaca_serve/models/{PROJECT_MODEL_NAME}, made by `make alpaca-model`), as "
        f"`{PROJECT_MODEL_NAME}`; false: the base alone",
    )
    max_loras: int = Field(
        default=4, ge=1, description="LoRA adapters the engine holds at once (in one batch)"
    )
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        default=16, description="largest LoRA rank served; an adapter of a larger rank is refused"
    )
    adapters_poll_s: float = Field(
        default=2.0,
        gt=0,
        description="how often adapters_dir is scanned for new or removed adapters",
    )
    filters: list[FilterSettings] = Field(
        default_factory=list,
        description="content filters, as JSON: "
        '[{"factory": "package.module:factory", "options": {...}, "fail_open": false, '
        '"timeout_s": 2.0}]',
    )

    @field_validator(
        "model",
        "model_name",
        "compile_cache_dir",
        "kv_block_size",
        "blocklist",
        "api_keys",
        "admin_keys",
        "api_keys_file",
        "cors_origins",
        "adapters_dir",
        "adapters",
        "log_retention_days",
        mode="before",
    )
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        return none_if_blank(value)

    @field_validator("speculative", mode="before")
    @classmethod
    def _empty_means_off(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip().lower() or "off"
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> ServerSettings:
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(
                f"default_max_new_tokens ({self.default_max_new_tokens}) is above "
                f"max_new_tokens_limit ({self.max_new_tokens_limit})"
            )
        if self.max_new_tokens_limit >= self.max_model_len:
            raise ValueError(
                f"max_new_tokens_limit ({self.max_new_tokens_limit}) leaves no room for a prompt "
                f"in max_model_len ({self.max_model_len})"
            )
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"api_keys_file {self.api_keys_file} does not exist")
        try:
            self.api_key_list  # noqa: B018  # reads the keys file: a malformed line stops here
        except KeysFileError as err:
            raise ValueError(str(err)) from None
        if self.admin_keys is not None and not self.admin_key_list:
            raise ValueError("admin_keys set but no key read: give a key, or unset it")
        if (self.api_keys is not None or self.api_keys_file is not None) and not self.api_key_list:
            # Keys asked for but none read: failing open would serve every route without one.
            where = " and ".join(
                name
                for name, value in (
                    ("api_keys", self.api_keys),
                    (f"api_keys_file {self.api_keys_file}", self.api_keys_file),
                )
                if value is not None
            )
            raise ValueError(
                f"{where} set but no API key read (blank entries and comments are not keys): "
                "give a key, or unset it to run without keys"
            )
        if self.rate_limit_per_minute is not None and not self.api_key_list:
            raise ValueError("rate_limit_per_minute is per API key: set api_keys as well")
        if self.blocklist is not None and not self.blocklist.is_file():
            raise ValueError(f"blocklist file {self.blocklist} does not exist")
        if self.model is not None and not (self.model / "config.json").is_file():
            raise ValueError(
                f"model folder {self.model} has no config.json (expected a Hugging Face folder)"
            )
        if self.adapters_dir is not None and not self.adapters_dir.is_dir():
            raise ValueError(f"adapters_dir {self.adapters_dir} is not a folder")
        parse_adapter_list(self.adapters)  # a malformed list stops the server here
        if self.kv_block_size is not None and self.kv_block_size % 16:
            raise ValueError(f"kv_block_size ({self.kv_block_size}) is not a multiple of 16")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                f"prompt_lookup_min ({self.prompt_lookup_min}) is above prompt_lookup_max "
                f"({self.prompt_lookup_max})"
            )
        return self

    @property
    def adapter_paths(self) -> dict[str, Path]:
        """The adapters named in `adapters`, name -> folder; with the project's model first when
        it is served (a name in `adapters` takes precedence)."""
        named = parse_adapter_list(self.adapters)
        if self.serves_project_model and PROJECT_MODEL_NAME not in named:
            return {PROJECT_MODEL_NAME: PROJECT_MODEL_DIR, **named}
        return named

    @property
    def serves_project_model(self) -> bool:
        """Whether the project's Alpaca model is served: asked for, the base being the default
        model it was trained from, and the adapter shipped in this installation."""
        return self.project_model and self.model is None and project_model_available()

    @property
    def serves_adapters(self) -> bool:
        """Whether LoRA is enabled in the engine: only when adapters are configured (LoRA
        turns compilation off and costs speed)."""
        return self.adapters_dir is not None or bool(self.adapter_paths)

    @property
    def admin_key_list(self) -> list[str]:
        """The admin keys given in the environment (admin_keys)."""
        return split_keys(self.admin_keys)

    @property
    def api_key_list(self) -> list[str]:
        """Every configured key as the settings are now, from api_keys, admin_keys and
        api_keys_file (whatever its role); the server itself holds a KeyRing (server/keys.py),
        which reads the file again when it changes."""
        keys = split_keys(self.api_keys) + self.admin_key_list
        if self.api_keys_file is not None and self.api_keys_file.is_file():
            keys += parse_keys_file(self.api_keys_file, self.api_keys_file.read_text())
        return list(dict.fromkeys(keys))

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]

    @property
    def local_url(self) -> str:
        """The server's own address, as a process on this machine reaches it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def store_url(self) -> str:
        """Where generations and feedback are kept (the same rule as StoreSettings.store_url)."""
        return self.database_url or default_database_url(self.data_dir)

    @property
    def compile_cache_root(self) -> Path:
        return self.compile_cache_dir or self.cache_dir / "compile"

    @property
    def served_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        return self.model.name if self.model else DEFAULT_MODEL_NAME
