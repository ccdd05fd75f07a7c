"""config.toml (+ ICEBURGD_<SECTION>_<KEY> env overrides) -> one frozen, typed, validated Config tree."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from iceburg_daemon import ROLES
from iceburg_daemon.config_release import EvalConfig, GateConfig, PublishConfig, RegistryConfig, validate_release
from iceburg_daemon.config_training import TrainingConfig, TrainParams, validate_training
from iceburg_daemon.config_trigger import DeferConfig, TriggerParams, validate_triggers
from iceburg_daemon.errors import ConfigError

ENV_PREFIX = "ICEBURGD_"


@dataclass(frozen=True)
class PathsConfig:
    data_dir: Path = Path("data")  # store, inbox, archive, quarantine, logs, snapshots
    models_dir: Path = Path("models")  # base models, adapters, merged models


@dataclass(frozen=True)
class InboxConfig:
    settle_seconds: float = 0.5  # a file is claimed once its mtime is at least this old
    open_settle_seconds: float = 900.0  # ... or this old while another process still holds it open for writing
    late_append_watch_seconds: float = 3600.0  # archived files are watched this long for lines appended late
    rescan_seconds: float = 5.0  # full rescan period; watchdog events only wake the loop early
    watch: bool = True  # use watchdog for wake-ups (the rescan still runs)
    after_ingest: Literal["archive", "delete"] = "archive"
    max_record_bytes: int = 1_048_576  # a longer line is quarantined as too_large
    max_depth: int = 64  # JSON nested deeper is quarantined as too_deep (ICEBURG's records nest about 5 levels)
    batch_size: int = 500  # lines per transaction (and per resume checkpoint)
    max_rejects_per_file: int = 10_000  # past this, a file quarantining more lines than it stores goes whole


@dataclass(frozen=True)
class ChromaStoreConfig:
    name: str  # letters, digits, '-', '_'; shown in status and metrics
    path: Path  # the store's persist directory (read from a private snapshot, never written)
    enabled: bool = True  # false: kept in the config, not synced


@dataclass(frozen=True)
class LogSourceConfig:
    name: str  # letters, digits, '-', '_'; shown in status and metrics
    path: str  # a glob of JSONL files read where they lie, never moved or changed ("~/iceburg/data/*.jsonl")
    enabled: bool = True  # false: kept in the config, not followed


@dataclass(frozen=True)
class SourcesConfig:
    chroma: tuple[ChromaStoreConfig, ...] = ()
    logs: tuple[LogSourceConfig, ...] = ()
    sync_seconds: float = 300.0  # how often a healthy store is re-synced
    timeout_seconds: float = 120.0  # the reader child is killed after this long
    backoff_seconds: float = 30.0  # first retry delay for an unhealthy store, doubled per failure
    backoff_max_seconds: float = 3600.0
    rotated_grace_seconds: float = 300.0  # a followed file renamed away is read on until idle this long
    max_open_files: int = 64  # descriptors kept open on followed files (a file deleted while open is still read)


@dataclass(frozen=True)
class QualityConfig:
    # on: judge new sft/preference records with the filter chain; off: accept every one unjudged (reason
    # filter_off; status warns while it is on); paused: judge nothing (records wait, untrainable, until "on")
    mode: Literal["on", "off", "paused"] = "on"
    batch_size: int = 500  # records judged per transaction
    workers: int = -1  # processes computing the next batch's features meanwhile; -1: one per spare CPU, max 2
    # 1 structure
    min_answer_chars: int = 20
    max_chars: int = 32_000  # whole conversation
    max_tokens: int = 8_192  # approximated as characters / 4
    reject_refusals: bool = True
    # 2 quality signals (thresholds per role: [<role>] min_quality_score)
    signals: bool = True  # telemetry failures and hallucination patterns count against a record
    # 3, 4 duplicates
    exact_dedup: bool = True
    near_dedup: bool = True
    near_threshold: float = 0.8  # estimated Jaccard of answer word 5-gram shingles
    # 5 templates
    template: bool = True
    template_threshold: float = 0.5  # similarity of answer skeletons (prompt words masked)
    template_keep: int = 1  # members of one skeleton that are kept; the rest are rejected
    # 6 repetition and junk
    repetition: bool = True
    min_alpha_share: float = 0.5
    max_dup_line_share: float = 0.3
    # 7 secrets and personal data: always redacted at ingest; here: accept the redacted record or reject it
    secrets: Literal["redact", "reject"] = "redact"
    # 8 semantic duplicates: on when [embedding] provider is set
    semantic: bool = True
    semantic_threshold: float = 0.95  # cosine similarity to an accepted answer of the same role
    # 9 role checks ([<role>] require_json)
    role_checks: bool = True


@dataclass(frozen=True)
class EmbeddingConfig:
    provider: Literal["none", "hash", "ollama", "onnx"] = "none"  # the semantic filter's embedder; none: filter 8 off
    model: str = "nomic-embed-text"  # for ollama
    url: str = "http://127.0.0.1:11434"  # for ollama
    timeout_seconds: float = 60.0  # for ollama: one embedding call; a failure backs the filter off (30 s .. 10 min)
    dim: int = 384  # for hash
    onnx_model: str = ""  # for onnx: model.onnx path; "" = the one the `onnx` extra installs
    onnx_tokenizer: str = ""  # for onnx: tokenizer.json path; "" = the one the `onnx` extra installs


@dataclass(frozen=True)
class DaemonConfig:
    heartbeat_seconds: float = 5.0  # loop period when nothing wakes it
    stale_after_seconds: float = 60.0  # status calls a heartbeat older than this stale
    # Below this much free space in the data folder no new input is taken (ingest, sources, filter) until
    # space is freed: nothing is lost, the inbox simply waits. Training defers on [defer] min_free_disk_gb.
    min_free_mb: float = 200.0


@dataclass(frozen=True)
class LogsConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    max_bytes: int = 10_485_760
    backups: int = 5


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True  # serve /metrics and /healthz
    host: str = "127.0.0.1"
    port: int = 9477  # a port in use is logged and shown by status; the daemon runs on without it


@dataclass(frozen=True)
class RoleConfig:
    enabled: bool = True  # false: never trained (triggers, train and status skip it)
    publish_name: str = ""  # Ollama model name the ICEBURG agent uses; default iceburg-<role>:latest
    min_quality_score: float = 0.5  # a known quality_score below this rejects; null is unknown, never 0
    require_json: bool = False  # the answer must be ICEBURG's principle JSON (meant for oracle)
    train: TrainParams = field(default_factory=TrainParams)  # [<role>.train]
    trigger: TriggerParams = field(default_factory=TriggerParams)  # [<role>.trigger]


@dataclass(frozen=True)
class Config:
    config_path: Path | None = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    inbox: InboxConfig = field(default_factory=InboxConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    defer: DeferConfig = field(default_factory=DeferConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    surveyor: RoleConfig = field(default_factory=RoleConfig)
    dissident: RoleConfig = field(default_factory=RoleConfig)
    synthesist: RoleConfig = field(default_factory=RoleConfig)
    oracle: RoleConfig = field(default_factory=RoleConfig)
    general: RoleConfig = field(default_factory=lambda: RoleConfig(enabled=False))

    def role(self, name: str) -> RoleConfig:
        return typing.cast(RoleConfig, getattr(self, name))

    @property
    def shutdown_seconds(self) -> int:
        """The longest an orderly shutdown takes: every child gets stop_grace_seconds at once (training and
        evaluation are stopped together), plus a margin for the last batch and the store. launchd's ExitTimeOut
        is set to this, so it never SIGKILLs a daemon that is still stopping in order."""
        return int(self.training.stop_grace_seconds) + 30

    # Derived locations: one place names every folder under data_dir.
    @property
    def data_dir(self) -> Path:
        return self.paths.data_dir

    @property
    def db_path(self) -> Path:
        return self.data_dir / "iceburgd.sqlite3"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "iceburgd.lock"

    @property
    def inbox_dir(self) -> Path:
        return self.data_dir / "inbox"

    @property
    def processing_dir(self) -> Path:
        return self.inbox_dir / ".processing"

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "archive"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def evals_dir(self) -> Path:
        return self.data_dir / "evals"

    @property
    def runs_dir(self) -> Path:
        return self.models_dir / "runs"

    @property
    def base_models_dir(self) -> Path:
        return self.models_dir / "base"

    @property
    def models_dir(self) -> Path:
        return self.paths.models_dir


SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "config_path"]
_PATH_SECTIONS = {"paths"}


def load_config(path: Path | None, env: typing.Mapping[str, str] | None = None) -> Config:
    """Read, override from env, validate. Raises ConfigError listing every problem at once."""
    env = os.environ if env is None else env
    problems: list[str] = []
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path).expanduser().resolve()
        base_dir = path.parent
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError([f"{path}: cannot parse: {exc}"]) from None
    _apply_env(raw, env, problems)
    if isinstance(raw.get("quality"), dict) and "enabled" in raw["quality"]:
        raw["quality"].pop("enabled")
        problems.append('quality.enabled: replaced by quality.mode = "on" | "off" (accept everything, reason'
                        ' filter_off) | "paused" (judge nothing; records wait)')
    sections: dict[str, Any] = {}
    for name in raw:
        if name not in SECTIONS:
            problems.append(f"unknown section [{name}] (known: {', '.join(SECTIONS)})")
    for f in dataclasses.fields(Config):
        if f.name == "config_path" or f.name not in raw:
            continue
        hint = typing.get_type_hints(Config)[f.name]
        sections[f.name] = _build(hint, raw[f.name], f.name, problems, base_dir)
    cfg = Config(config_path=path, **{k: v for k, v in sections.items() if v is not None})
    cfg = _resolve_paths(cfg, base_dir)
    _validate(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def _apply_env(raw: dict[str, Any], env: typing.Mapping[str, str], problems: list[str]) -> None:
    """ICEBURGD_METRICS_PORT=9000 sets [metrics] port; values parse as TOML, else as plain strings."""
    for var, text in env.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX + "CONFIG":
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        section = next((s for s in sorted(SECTIONS, key=len, reverse=True) if rest.startswith(s + "_")), None)
        if section is None:
            problems.append(f"{var}: no such section (known: {', '.join(SECTIONS)})")
            continue
        key = rest[len(section) + 1 :]
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        target = raw.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = value


def _build(hint: Any, value: Any, where: str, problems: list[str], base_dir: Path) -> Any:
    """Coerce a TOML value to `hint`, appending a readable problem (and returning None) when it does not fit."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a table, got {type(value).__name__}")
            return None
        hints = typing.get_type_hints(hint)
        names = {f.name for f in dataclasses.fields(hint)}
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            if key not in names:
                problems.append(f"{where}.{key}: unknown key (known: {', '.join(sorted(names))})")
                continue
            built = _build(hints[key], item, f"{where}.{key}", problems, base_dir)
            if built is not None:
                kwargs[key] = built
        missing = [
            f.name
            for f in dataclasses.fields(hint)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in kwargs
        ]
        if missing:
            if not any(p.startswith(where) for p in problems):
                problems.append(f"{where}: missing required key(s): {', '.join(missing)}")
            return None
        return hint(**kwargs)
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return None
        item_hint = typing.get_args(hint)[0]
        items = [_build(item_hint, v, f"{where}[{i}]", problems, base_dir) for i, v in enumerate(value)]
        return tuple(i for i in items if i is not None)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            problems.append(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
            return None
        return value
    if origin in (typing.Union, types.UnionType):
        return _build(next(a for a in typing.get_args(hint) if a is not type(None)), value, where, problems, base_dir)
    if hint is Path:
        if not isinstance(value, str) or not value:
            problems.append(f"{where}: expected a path string, got {value!r}")
            return None
        return Path(value).expanduser()
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {value!r}")
            return None
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, got {value!r}")
            return None
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {value!r}")
            return None
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {value!r}")
            return None
        return value
    raise TypeError(f"config loader has no rule for {hint!r}")  # a programming error, not a user one


def _resolve_paths(cfg: Config, base_dir: Path) -> Config:
    """Relative paths are relative to the config file's folder (or the cwd without a file)."""

    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base_dir / p).resolve()

    paths = PathsConfig(absolute(cfg.paths.data_dir), absolute(cfg.paths.models_dir))
    chroma = tuple(dataclasses.replace(s, path=absolute(s.path)) for s in cfg.sources.chroma)
    logs = tuple(dataclasses.replace(s, path=str(absolute(Path(s.path).expanduser()))) for s in cfg.sources.logs)
    return dataclasses.replace(cfg, paths=paths, sources=dataclasses.replace(cfg.sources, chroma=chroma, logs=logs))


def _validate(cfg: Config, problems: list[str]) -> None:
    """Value checks that types alone cannot express."""
    for section in ("inbox", "sources", "daemon", "quality"):
        for f in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if isinstance(value, float) and value < 0:
                problems.append(f"{section}.{f.name}: must be >= 0, got {value}")
    if not 8 <= cfg.inbox.max_depth <= 500:
        problems.append(f"inbox.max_depth: must be between 8 and 500, got {cfg.inbox.max_depth}")
    if cfg.inbox.max_rejects_per_file < 0:
        problems.append(f"inbox.max_rejects_per_file: must be >= 0 (0: no limit), got {cfg.inbox.max_rejects_per_file}")
    if cfg.inbox.max_record_bytes < 64:
        problems.append(f"inbox.max_record_bytes: must be >= 64, got {cfg.inbox.max_record_bytes}")
    for name in ("near_threshold", "template_threshold", "min_alpha_share", "max_dup_line_share",
                 "semantic_threshold"):
        if not 0 <= getattr(cfg.quality, name) <= 1:
            problems.append(f"quality.{name}: must be between 0 and 1, got {getattr(cfg.quality, name)}")
    if cfg.quality.batch_size < 1 or cfg.quality.template_keep < 0:
        problems.append("quality: batch_size must be >= 1 and template_keep >= 0")
    if not -1 <= cfg.quality.workers <= 8:
        problems.append(f"quality.workers: must be -1 (auto) or 0-8, got {cfg.quality.workers}")
    if cfg.inbox.batch_size < 1:
        problems.append(f"inbox.batch_size: must be >= 1, got {cfg.inbox.batch_size}")
    if cfg.daemon.heartbeat_seconds <= 0:
        problems.append("daemon.heartbeat_seconds: must be > 0")
    if not 0 <= cfg.metrics.port <= 65535:
        problems.append(f"metrics.port: must be 0-65535, got {cfg.metrics.port}")
    if cfg.logs.backups < 0 or cfg.logs.max_bytes < 1024:
        problems.append("logs: backups must be >= 0 and max_bytes >= 1024")
    validate_training(cfg.training, {r: cfg.role(r).train for r in ROLES}, problems)
    validate_triggers(cfg.defer, {r: cfg.role(r).trigger for r in ROLES}, problems)
    validate_release(cfg.eval, cfg.gate, cfg.registry, cfg.publish, problems)
    for kind, named in (("chroma", cfg.sources.chroma), ("logs", cfg.sources.logs)):
        names = [s.name for s in named]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"sources.{kind}: name {dup!r} is used more than once")
        for s in named:
            if not s.name.replace("-", "").replace("_", "").isalnum():
                problems.append(f"sources.{kind}: name {s.name!r} must be letters, digits, '-' or '_'")
    for s in cfg.sources.chroma:
        if s.path.exists() and not s.path.is_dir():
            problems.append(f"sources.chroma.{s.name}.path: {s.path} is not a directory")
    for log_source in cfg.sources.logs:
        problems += log_source_problems(log_source, cfg.paths.data_dir)
    if cfg.sources.max_open_files < 1:
        problems.append(f"sources.max_open_files: must be >= 1, got {cfg.sources.max_open_files}")
    for p in (cfg.paths.data_dir, cfg.paths.models_dir):
        if p.exists() and not p.is_dir():
            problems.append(f"paths: {p} exists and is not a directory")
        elif not p.exists() and not _creatable(p):
            problems.append(f"paths: {p} cannot be created (no writable parent)")


def _wild(part: str) -> bool:
    return any(c in part for c in "*?[")


def glob_base(pattern: str) -> Path:
    """The folder a glob starts from: its parts before the first wildcard (a plain path's parent)."""
    parts = Path(pattern).parts
    return Path(*parts[: next((i for i, part in enumerate(parts) if _wild(part)), len(parts) - 1)])


def log_source_problems(source: LogSourceConfig, data_dir: Path) -> list[str]:
    """A followed glob names files, not a folder, and stays out of the daemon's own data folder."""
    where, pattern = f"sources.logs.{source.name}.path", Path(source.path)
    if not _wild(pattern.name) and pattern.is_dir():
        return [f"{where}: {pattern} is a folder; give a glob of files, such as {pattern / '*.jsonl'}"]
    base = glob_base(source.path)
    if base == data_dir or data_dir in base.parents or (base in data_dir.parents and "**" in source.path):
        return [f"{where}: {source.path} reaches into the daemon's data folder {data_dir}"]
    return []


def _creatable(p: Path) -> bool:
    parent = p
    while not parent.exists():
        parent = parent.parent
    return parent.is_dir() and os.access(parent, os.W_OK)


def publish_name(cfg: Config, role: str) -> str:
    return cfg.role(role).publish_name or f"iceburg-{role}:latest"


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (saved into run folders, printed by `config show`)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(i) for i in v]
        if isinstance(v, Path):
            return str(v)
        return v

    data = plain(cfg)
    for role in ROLES:
        data[role]["publish_name"] = publish_name(cfg, role)
    return typing.cast(dict[str, Any], json.loads(json.dumps(data)))
