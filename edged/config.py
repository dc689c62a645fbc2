"""Configuration: pydantic models, YAML + conf.d merge, errors that name file, key and line.

This module is the only place that holds defaults. Everything else receives a frozen
`Config` (or one of its sections) through its constructor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edged.governor_config import ThermalConfig, TrackerConfig
from edged.ipc.limits import MAX_SOURCES

DEFAULT_CONFIG_PATH = Path("/etc/edged/edged.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/edged")
DEFAULT_RUNTIME_DIR = Path("/run/edged")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(Section):
    uri: str = Field(
        description="Video file path, camera index ('0'), V4L2 device ('/dev/video0') or "
        "rtsp:// / http(s):// URL.",
    )
    name: str = Field("default", min_length=1, max_length=32, description="Source id in events.")
    mode: Literal["paced", "lossless"] = Field(
        "paced",
        description="File sources only. paced: play at the file's (or `fps`) rate and drop "
        "stale frames like a camera. lossless: wait for the detector, infer every frame.",
    )
    fps: float | None = Field(
        None, gt=0, le=240, description="Pace for files / cap for cameras; None = native."
    )
    loop: bool = Field(False, description="File sources: start again at the end.")
    classes: list[str] | None = Field(
        None, description="Allow-list of class names to keep; None keeps every class."
    )
    min_score: float = Field(
        0.0, ge=0, le=1, description="Extra per-source score floor applied after NMS."
    )
    timeout_s: float = Field(
        10.0, gt=0, le=300, description="No frame for this long: reconnect (no worker restart)."
    )
    reconnect_initial_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="Reconnect delay cap.")
    roi: list[tuple[float, float]] | None = Field(
        None, min_length=3,
        description="Region of interest: polygon [[x, y], ...] in source-frame pixels; only "
        "objects whose box bottom-centre (where they stand) lies inside become events.",
    )
    max_width: int = Field(1920, ge=64, le=8192, description="Larger frames are downscaled.")
    max_height: int = Field(1080, ge=64, le=8192, description="Larger frames are downscaled.")

    @property
    def kind(self) -> Literal["camera", "url", "file"]:
        if self.uri.isdigit() or self.uri.startswith("/dev/video"):
            return "camera"
        if "://" in self.uri:
            return "url"
        return "file"


class ModelConfig(Section):
    path: Path = Field(description="ONNX model file (YOLOv5/YOLOv8/YOLO11 layout).")
    names_file: Path | None = Field(
        None, description="One class name per line; overrides names in the model metadata."
    )
    input_size: int | None = Field(
        None,
        ge=32,
        le=2048,
        multiple_of=32,
        description="Square input side; None = the model's own (fixed shape or metadata).",
    )
    backend: Literal["auto", "onnxruntime", "tensorrt", "ncnn"] = Field(
        "auto",
        description="auto: TensorRT when it imports and a GPU is present, NCNN on ARM when the "
        "model has an NCNN twin, ONNX Runtime otherwise. A backend named explicitly that "
        "cannot run is an error (exit 69), never a fallback.",
    )
    providers: list[Literal["cpu", "cuda", "tensorrt", "openvino"]] = Field(
        default_factory=lambda: ["cpu"], min_length=1, description="ONNX Runtime EPs, in order."
    )
    intra_op_threads: int = Field(0, ge=0, le=64, description="0 = ONNX Runtime's default.")
    inter_op_threads: int = Field(1, ge=0, le=64, description="0 = ONNX Runtime's default.")
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto",
        description="ONNX Runtime I/O binding into a preallocated output; auto = on for GPU "
        "providers (saves the device->host staging copy), off on CPU (nothing to save).",
    )
    ort_optimized_cache: bool = Field(
        False,
        description="Keep ONNX Runtime's optimized graph in cache_dir and load it next start "
        "(keyed by model sha256, onnxruntime version and CPU, so a stale file is never used).",
    )
    cache_dir: Path = Field(
        DEFAULT_STATE_DIR / "cache",
        description="TensorRT engines + timing cache, ORT optimized models.",
    )
    ncnn_threads: int = Field(0, ge=0, le=64, description="NCNN threads; 0 = usable cores.")
    trt_precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16",
        description="TensorRT engine precision; fp16 falls back to fp32 (logged) where the GPU "
        "has no fast FP16; int8 needs a calibration cache (edged build-engine --calib-*).",
    )
    trt_workspace_mb: int = Field(
        1024, ge=16, le=65536, description="TensorRT builder workspace memory pool limit."
    )
    trt_calibration_cache: Path | None = Field(
        None, description="INT8 calibration cache written by `edged build-engine`."
    )


class DetectConfig(Section):
    conf: float = Field(0.5, gt=0, le=1, description="Score threshold before NMS.")
    iou: float = Field(0.45, gt=0, le=1, description="NMS IoU threshold (class-aware).")
    max_det: int = Field(100, ge=1, le=1000, description="Detections kept per frame.")


class QueueConfig(Section):
    frame_slots: int = Field(4, ge=3, le=64, description="Capture->inference ring slots.")
    result_slots: int = Field(
        1024, ge=16, le=65536, description="Inference->sink ring slots (frames of detections)."
    )


class StoreConfig(Section):
    path: Path = Field(DEFAULT_STATE_DIR / "events.db", description="SQLite database file.")
    commit_interval_s: float = Field(1.0, gt=0, le=60, description="Max time between commits.")
    commit_max_rows: int = Field(500, ge=1, le=100_000, description="Rows per transaction cap.")
    record_detections: bool = Field(False, description="Also store every raw detection.")
    event_gap_s: float = Field(
        2.0, gt=0, le=3600, description="An object unseen this long ends its event."
    )
    retention_days: float = Field(30, gt=0, description="Rows older than this are deleted.")
    max_db_mb: float = Field(1024, gt=0, description="Oldest rows are pruned above this size.")


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "journal", "json"] = Field(
        "auto", description="auto: journal under systemd, console on a TTY, json otherwise."
    )


class DaemonConfig(Section):
    status_interval_s: float = Field(5.0, gt=0, le=3600, description="Status line period.")
    runtime_dir: Path = Field(DEFAULT_RUNTIME_DIR, description="Status file location.")
    stop_timeout_s: float = Field(
        20.0, gt=0, le=600, description="Budget for a clean stop; workers are killed after it."
    )


class WatchdogConfig(Section):
    capture_stall_s: float = Field(
        20.0, gt=0, le=600, description="Capture heartbeat older than this: stalled."
    )
    inference_stall_s: float = Field(
        15.0, gt=0, le=600, description="Inference heartbeat older than this: stalled."
    )
    sink_stall_s: float = Field(
        30.0, gt=0, le=600, description="Sink heartbeat older than this: stalled."
    )
    inference_timeout_s: float = Field(
        10.0, gt=0, le=600, description="One inference running longer than this: stalled."
    )
    startup_grace_s: float = Field(
        120.0, gt=0, le=3600,
        description="Allowed silence while a worker starts (model load, engine build).",
    )
    kill_grace_s: float = Field(3.0, gt=0, le=60, description="SIGTERM, then SIGKILL after.")
    backoff_initial_s: float = Field(0.5, gt=0, le=60, description="First restart delay.")
    backoff_max_s: float = Field(30.0, gt=0, le=600, description="Restart delay cap.")
    max_restarts: int = Field(
        5, ge=1, le=100, description="More restarts of one worker within the window: exit 70."
    )
    restart_window_s: float = Field(60.0, gt=0, le=86400, description="Crash-loop window.")
    unhealthy_budget_s: float = Field(
        300.0, gt=0, le=86400,
        description="A worker not running for longer than this withholds WATCHDOG=1.",
    )


class MetricsConfig(Section):
    enabled: bool = Field(True, description="Serve Prometheus metrics.")
    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 exposes it on the LAN.")
    port: int = Field(9108, ge=1, le=65535, description="HTTP port of /metrics.")


_TOPIC_WORD = r"^[^/+#\s]+$"  # one MQTT topic level: no separators or wildcards


class MqttConfig(Section):
    """MQTT publisher (edged/uplink): events, availability, stats, Home Assistant discovery."""

    enabled: bool = Field(False, description="Run the uplink worker and publish to a broker.")
    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS).")
    username: str | None = Field(None, description="Broker user; None = anonymous.")
    password: SecretStr | None = Field(
        None, description="Broker password; shown as ********** by check-config, never logged."
    )
    tls: bool = Field(False, description="Connect with TLS (system CAs unless ca_file is set).")
    ca_file: Path | None = Field(None, description="CA bundle that signs the broker cert.")
    device: str | None = Field(
        None, pattern=_TOPIC_WORD, max_length=64,
        description="Device id in topics and payloads; None = the host name.",
    )
    topic_prefix: str = Field(
        "edged", min_length=1, max_length=64, pattern=r"^[^+#\s]+$",
        description="Topics are <topic_prefix>/<device>/{events,status,stats}.",
    )
    client_id: str | None = Field(None, max_length=64, description="None = edged-<device>.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive interval.")
    stats_interval_s: float = Field(
        30.0, ge=1, le=86400, description="Period of the retained stats message."
    )
    ha_discovery: bool = Field(
        False, description="Publish Home Assistant MQTT discovery configs (retained)."
    )
    ha_prefix: str = Field(
        "homeassistant", pattern=_TOPIC_WORD, description="Home Assistant discovery prefix."
    )


class SyncConfig(Section):
    """Store-and-forward of events from the SQLite outbox to the broker."""

    send: Literal["final", "updates"] = Field(
        "final",
        description="final: one message per event, once it has ended (exactly once by uid "
        "under normal operation). updates: a message whenever its stored row changed, the "
        "last one with ended=true; consumers keep the highest version per uid.",
    )
    batch_size: int = Field(100, ge=1, le=1000, description="Events published per batch.")
    interval_s: float = Field(
        1.0, gt=0, le=60, description="Outbox poll period while there is nothing to send."
    )
    ack_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Wait this long for a batch's PUBACKs, then retry later."
    )
    reconnect_initial_s: int = Field(1, ge=1, le=60, description="First reconnect delay.")
    reconnect_max_s: int = Field(60, ge=1, le=3600, description="Reconnect delay cap.")
    flush_timeout_s: float = Field(
        5.0, ge=0, le=60, description="At a clean stop, keep sending the backlog this long."
    )

    @model_validator(mode="after")
    def _reconnect_bounds(self) -> SyncConfig:
        if self.reconnect_initial_s > self.reconnect_max_s:
            raise ValueError("reconnect_initial_s must not exceed reconnect_max_s")
        return self


class SnapshotConfig(Section):
    """A JPEG of the best frame of each event (edged/store/snapshots.py)."""

    enabled: bool = Field(False, description="Write a snapshot per event.")
    dir: Path = Field(DEFAULT_STATE_DIR / "snapshots", description="Where snapshots are kept.")
    style: Literal["box", "crop"] = Field(
        "box", description="box: the whole frame with the box drawn; crop: the object only."
    )
    max_per_s: float = Field(
        2.0, gt=0, le=30, description="JPEG encodes per second at most (the inference worker "
        "does them)."
    )
    min_gain: float = Field(
        0.05, ge=0, le=1, description="A new snapshot needs a score this much higher."
    )
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality.")
    crop_margin: float = Field(
        0.15, ge=0, le=2, description="crop: margin around the box, as a share of its size."
    )
    max_mb: float = Field(
        1024, gt=0, description="Oldest snapshots are deleted above this total size."
    )


class Config(Section):
    sources: list[SourceConfig] = Field(
        min_length=1, max_length=MAX_SOURCES,
        description="Cameras, streams or files; one capture worker each. A single `source:` "
        "mapping is accepted too.",
    )
    model: ModelConfig
    detect: DetectConfig = DetectConfig()
    queues: QueueConfig = QueueConfig()
    store: StoreConfig = StoreConfig()
    logging: LoggingConfig = LoggingConfig()
    daemon: DaemonConfig = DaemonConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    thermal: ThermalConfig = ThermalConfig()
    tracker: TrackerConfig = TrackerConfig()
    metrics: MetricsConfig = MetricsConfig()
    mqtt: MqttConfig = MqttConfig()
    sync: SyncConfig = SyncConfig()
    snapshots: SnapshotConfig = SnapshotConfig()
    models: dict[int, Path] = Field(
        default_factory=dict,
        description="Optional fixed-size models per input size ({320: m320.onnx}) for the "
        "thermal ladder; a dynamic-shape model.path needs none.",
    )

    @model_validator(mode="before")
    @classmethod
    def _single_source(cls, data: Any) -> Any:
        if isinstance(data, dict) and "source" in data:
            if "sources" in data:
                raise ValueError("give either `source:` or `sources:`, not both")
            data = {**data, "sources": [data["source"]]}
            del data["source"]
        return data

    @field_validator("sources")
    @classmethod
    def _sources_are_sane(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique (got {names})")
        for source in sources:
            if source.reconnect_initial_s > source.reconnect_max_s:
                raise ValueError("reconnect_initial_s must not exceed reconnect_max_s")
            if source.mode == "lossless" and source.kind != "file":
                raise ValueError("source mode 'lossless' only applies to video files")
        return sources

    @model_validator(mode="after")
    def _capture_stall_outlasts_source_timeout(self) -> Config:
        # A read may block for up to source.timeout_s; that is a reconnect, not a stall.
        if any(self.watchdog.capture_stall_s <= s.timeout_s for s in self.sources):
            raise ValueError("watchdog.capture_stall_s must exceed every source's timeout_s")
        return self


class ConfigError(Exception):
    """A config that cannot be used; str() is one line naming file, key, line and the fix."""


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    files: tuple[Path, ...]


def config_files(path: Path) -> list[Path]:
    """The main file then `conf.d/*.yaml` beside it, in name order."""
    conf_d = path.parent / "conf.d"
    extra = sorted(conf_d.glob("*.yaml")) if conf_d.is_dir() else []
    return [path, *extra]


def load_config(path: Path = DEFAULT_CONFIG_PATH) -> LoadedConfig:
    """Read, merge and validate; raises ConfigError with a one-line message."""
    files = config_files(path)
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], tuple[Path, int]] = {}
    for file in files:
        data, lines = _read_yaml(file)
        _resolve_paths(data, file.parent)
        _deep_merge(merged, data)
        origins.update({key: (file, line) for key, line in lines.items()})
    if "source" in merged and "sources" not in merged:
        # Errors are reported as sources.0.<key>; keep pointing at the `source:` lines.
        origins.update({("sources", "0", *key[1:]): where for key, where in list(origins.items())
                        if key[0] == "source"})
    try:
        return LoadedConfig(Config.model_validate(merged), tuple(files))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins, files[0])) from None


def _read_yaml(file: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config ({exc.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else str(file)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: {problem}; fix the YAML syntax") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}:1: top level must be a mapping of sections (source:, model:)")
    return data, dict(_key_lines(node, ()))


def _key_lines(node: yaml.Node, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], int]]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*prefix, str(key.value))
            yield path, key.start_mark.line + 1
            yield from _key_lines(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = (*prefix, str(index))
            yield path, item.start_mark.line + 1
            yield from _key_lines(item, path)


# Relative paths in a config file mean "next to this file": systemd starts us in /.
_PATH_KEYS = {("model", "path"), ("model", "names_file"), ("store", "path"),
              ("daemon", "runtime_dir"), ("thermal", "sysfs_root"), ("thermal", "vcgencmd_path"),
              ("snapshots", "dir"), ("mqtt", "ca_file")}


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for section, key in _PATH_KEYS:
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            data[section][key] = str((base / value).resolve())
    models = data.get("models")
    if isinstance(models, dict):
        for size, value in models.items():
            if isinstance(value, str) and not Path(value).is_absolute():
                models[size] = str((base / value).resolve())
    sources = data.get("sources")
    for source in [data.get("source"), *(sources if isinstance(sources, list) else [])]:
        if isinstance(source, dict) and isinstance(source.get("uri"), str):
            uri = source["uri"]
            if "://" not in uri and not uri.isdigit() and not Path(uri).is_absolute():
                source["uri"] = str((base / uri).resolve())


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _describe(
    exc: ValidationError, origins: dict[tuple[str, ...], tuple[Path, int]], main: Path
) -> str:
    parts = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        file, line = main, None
        for cut in range(len(loc), 0, -1):
            if loc[:cut] in origins:
                file, line = origins[loc[:cut]]
                break
        where = f"{file}:{line}" if line else str(file)
        key = ".".join(loc) or "(top level)"
        parts.append(f"{where}: {key}: {_explain(error)}")
    return "; ".join(parts)


def _explain(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling (see `edged check-config --help`)"
    if kind == "missing":
        return "required key is missing"
    given = error.get("input")
    shown = repr(given) if not isinstance(given, dict) else "a mapping"
    return f"{error['msg']} (got {shown})"


def redact_uri(uri: str) -> str:
    """rtsp://user:secret@host/x -> rtsp://user:***@host/x (credentials never reach logs)."""
    scheme, sep, rest = uri.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return uri
    creds, _, host = authority.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"
