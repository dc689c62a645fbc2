"""`edged` command line: run the daemon, check config, query events, detect, bench, models."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from edged import __version__
from edged.config import DEFAULT_CONFIG_PATH, Config, ConfigError, LoggingConfig, load_config
from edged.exitcodes import ExitCode


def _config_path(value: str | None) -> Path:
    return Path(value or os.environ.get("EDGED_CONFIG") or DEFAULT_CONFIG_PATH)


def _fail(code: ExitCode, message: str) -> int:
    print(f"edged: {message}", file=sys.stderr)
    return int(code)


def cmd_run(args: argparse.Namespace) -> int:
    import faulthandler

    from edged.backends.base import ModelUnavailable
    from edged.logging import setup_logging
    from edged.preflight import SourceUnavailable, check
    from edged.supervisor import RunOptions, Supervisor

    path = _config_path(args.config)
    config = load_config(path).config
    setup_logging(config.logging, "supervisor")
    faulthandler.enable()  # a watchdog SIGABRT leaves the stack in the journal
    try:
        config, facts = check(config)
    except (ModelUnavailable, SourceUnavailable) as exc:
        return _fail(ExitCode.UNAVAILABLE, str(exc))
    options = RunOptions(duration_s=args.duration, max_frames=args.max_frames)
    return Supervisor(config, path, facts, options, preflight=check).run()


def cmd_status(args: argparse.Namespace) -> int:
    from edged.status import format_status, read_status_file

    runtime_dir = Path(args.runtime_dir) if args.runtime_dir else \
        load_config(_config_path(args.config)).config.daemon.runtime_dir
    doc = read_status_file(runtime_dir)
    if doc is None:
        print(f"edged is not running (no live status in {runtime_dir})", file=sys.stderr)
        return 3  # LSB: program is not running
    print(json.dumps(doc, indent=1) if args.json else format_status(doc))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    loaded = load_config(_config_path(args.path))
    print(f"# valid; merged from: {', '.join(str(f) for f in loaded.files)}")
    print(json.dumps(loaded.config.model_dump(mode="json"), indent=2))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from edged.store.queries import event_snapshot, parse_since, query_events

    db = Path(args.db) if args.db else load_config(_config_path(args.config)).config.store.path
    times: dict[str, float | None] = {}
    for flag in ("since", "until"):
        try:
            text = getattr(args, flag)
            times[flag] = parse_since(text) if text else None
        except ValueError as exc:
            return _fail(ExitCode.USAGE, f"--{flag}: {exc}")
    if not db.exists():
        return _fail(ExitCode.UNAVAILABLE, f"{db}: no event database yet; has edged run?")
    if args.snapshot is not None:
        event = event_snapshot(db, args.snapshot)
        if event is None or not event["snapshot"]:
            why = "no such event" if event is None else \
                "it has none (snapshots.enabled is off, or retention removed it)"
            return _fail(ExitCode.NOINPUT, f"event {args.snapshot}: no snapshot: {why}")
        print(event["snapshot"])
        return 0
    rows = query_events(db, since=times["since"], until=times["until"], label=args.label,
                        source=args.source, min_score=args.min_score, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if args.csv:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows(rows)
        return 0
    for row in rows:
        print(_event_line(row))
    return 0


def _event_line(row: dict[str, object]) -> str:
    import datetime as dt

    first = dt.datetime.fromtimestamp(float(row["first_seen"]))  # type: ignore[arg-type]
    duration = float(row["last_seen"]) - float(row["first_seen"])  # type: ignore[arg-type]
    box = ",".join(f"{float(row[k]):.0f}" for k in ("x1", "y1", "x2", "y2"))  # type: ignore[arg-type]
    return (f"{row['id']:>6}  {first:%Y-%m-%d %H:%M:%S}  {duration:6.1f}s  {row['source']}  "
            f"{row['label']:<12} score={float(row['best_score']):.2f} "  # type: ignore[arg-type]
            f"hits={row['hits']} box={box}")


def _model_config(args: argparse.Namespace) -> Config | None:
    """The configured model, or one given by --model (no config file needed)."""
    path = _config_path(args.config)
    if args.model is None or args.config is not None or path.exists():
        return load_config(path).config
    return None


def cmd_detect(args: argparse.Namespace) -> int:
    from edged.backends.base import ModelUnavailable
    from edged.tools.detect import detect_command

    try:
        return detect_command(args, _model_config(args))
    except ModelUnavailable as exc:
        return _fail(ExitCode.UNAVAILABLE, str(exc))


def cmd_bench_model(args: argparse.Namespace) -> int:
    from edged.backends.base import ModelUnavailable
    from edged.tools.bench import bench_model, format_bench_table
    from edged.tools.detect import model_settings
    from edged.tools.progress import tty_progress

    model, _ = model_settings(args, _model_config(args))
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else []
    try:
        result = bench_model(model, sizes, args.runs, args.warmup,
                             Path(args.image) if args.image else None,
                             progress=tty_progress("bench"))
    except ModelUnavailable as exc:
        return _fail(ExitCode.UNAVAILABLE, str(exc))
    if args.out:
        _write_result(result, args.out)
        print(format_bench_table(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from edged.preflight import model_facts, with_model_ladder
    from edged.tools.bench_pipeline import bench_pipeline, format_pipeline_table

    config = load_config(_config_path(args.config)).config
    config = with_model_ladder(config, model_facts(config.model))
    video = Path(args.video) if args.video else Path(config.sources[0].uri)
    if not video.is_file():
        return _fail(ExitCode.NOINPUT, f"{video}: no such video; pass --video FILE")
    modes = args.modes.split(",")
    try:
        result = bench_pipeline(config, modes, video, args.frames, args.threads)
    except RuntimeError as exc:
        return _fail(ExitCode.SOFTWARE, str(exc).splitlines()[0])
    _write_result(result, args.out)
    print(format_pipeline_table(result))
    return 0


def _write_result(result: dict[str, object], out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


def cmd_thermal(args: argparse.Namespace) -> int:
    import time

    from edged.backends.base import ModelUnavailable
    from edged.preflight import model_facts, with_model_ladder
    from edged.status import read_status_file
    from edged.thermal import ThermalSources

    config = load_config(_config_path(args.config)).config
    with contextlib.suppress(ModelUnavailable):  # then show the ladder as configured
        config = with_model_ladder(config, model_facts(config.model))
    thermal = config.thermal
    sources = ThermalSources(thermal)
    while True:
        readings = sources.read()
        running = read_status_file(config.daemon.runtime_dir)
        print(f"thresholds: medium >= {thermal.medium_at_c} C, low >= {thermal.low_at_c} C, "
              f"critical >= {thermal.critical_at_c} C (hysteresis {thermal.hysteresis_c} C, "
              f"dwell {thermal.dwell_s} s)")
        print("ladder: " + ", ".join(f"{m.name} {m.input_size}px skip {m.frame_skip} "
                                     f"conf {m.conf}" for m in thermal.modes))
        for zone in sources.describe():
            value = next((r.celsius for r in readings if r.zone == zone["zone"]), None)
            shown = "unreadable" if value is None else f"{value:.1f} C"
            print(f"  {zone['zone']} ({zone['type']}, {zone['path']}): {shown}")
        if not readings:
            print("  no temperature sensor readable: the governor stays in high")
        throttling = sources.throttling()
        if throttling:
            print(f"throttling: {throttling}")
        mode = running["thermal_mode"] if running else "(edged is not running)"
        print(f"hottest: {sources.hottest()} C   mode: {mode}")
        if not args.watch:
            return 0
        time.sleep(args.interval)
        print()


def cmd_model_import_darknet(args: argparse.Namespace) -> int:
    from edged.tools.darknet import DarknetImportError, import_darknet
    from edged.tools.model_info import describe_model
    from edged.tools.progress import tty_progress

    cfg = Path(args.cfg)
    names = Path(args.names) if args.names else None
    try:
        out = import_darknet(cfg, Path(args.weights), Path(args.out), names,
                             progress=tty_progress("import"))
    except (DarknetImportError, OSError) as exc:
        return _fail(ExitCode.UNAVAILABLE, str(exc))
    info = describe_model(out)
    print(f"wrote {out} ({info['size_bytes'] / 1e6:.1f} MB, {info['num_classes']} classes, "
          f"output {info['outputs'][0]['shape']}, sha256 {info['sha256'][:12]})")
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from edged.tools.model_info import ModelInfoError, describe_model, format_model_info

    try:
        info = describe_model(Path(args.file))
    except ModelInfoError as exc:
        return _fail(ExitCode.UNAVAILABLE, str(exc))
    print(json.dumps(info, indent=2) if args.json else format_model_info(info))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    import onnxruntime

    print(f"edged {__version__} (onnxruntime {onnxruntime.__version__})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edged", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", help=f"config file (default {DEFAULT_CONFIG_PATH}, $EDGED_CONFIG)")
    run.add_argument("--duration", type=float, metavar="S", help="stop cleanly after S seconds")
    run.add_argument("--max-frames", type=int, metavar="N", help="stop after N captured frames")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="state of the running daemon (exit 3: not running)")
    status.add_argument("--config")
    status.add_argument("--runtime-dir", help="default: daemon.runtime_dir from the config")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    check = sub.add_parser("check-config", help="validate and print the effective config")
    check.add_argument("path", nargs="?", help=f"config file (default {DEFAULT_CONFIG_PATH})")
    check.set_defaults(func=cmd_check_config)

    events = sub.add_parser("events", help="list stored events, newest first")
    events.add_argument("--config")
    events.add_argument("--db", help="event database (default: store.path from the config)")
    events.add_argument("--since", help="last seen at or after: 10m, 2h, 3d or an ISO time")
    events.add_argument("--until", help="first seen before: 10m, 2h, 3d or an ISO time")
    events.add_argument("--label")
    events.add_argument("--source")
    events.add_argument("--min-score", type=float, metavar="S", help="best score at least S")
    events.add_argument("--limit", type=int, default=100)
    output = events.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true")
    output.add_argument("--csv", action="store_true", help="CSV with a header row")
    output.add_argument("--snapshot", metavar="ID", help="print the path of the snapshot of "
                        "event ID (its id or uid)")
    events.set_defaults(func=cmd_events)

    detect = sub.add_parser("detect", help="one-shot detection on an image or video")
    detect.add_argument("input", help="image or video file")
    _model_args(detect)
    detect.add_argument("--conf", type=float, help="score threshold (default: config)")
    detect.add_argument("--max-frames", type=int, default=0, help="video: stop after N frames")
    detect.add_argument("--json", action="store_true")
    detect.set_defaults(func=cmd_detect)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    bench_model = bench_sub.add_parser("model", help="latency of the model (warm-up + N runs)")
    _model_args(bench_model)
    bench_model.add_argument("--sizes", help="input sizes, e.g. 416,320 (default: the model's)")
    bench_model.add_argument("--runs", type=int, default=100)
    bench_model.add_argument("--warmup", type=int, default=10)
    bench_model.add_argument("--image", help="image to letterbox as input (default: synthetic)")
    bench_model.add_argument("--out", help="write JSON here and print a table")
    bench_model.set_defaults(func=cmd_bench_model)

    pipeline = bench_sub.add_parser(
        "pipeline", help="the whole daemon on a video, once per thermal mode (lossless)")
    pipeline.add_argument("--config")
    pipeline.add_argument("--video", help="default: source.uri from the config")
    pipeline.add_argument("--modes", default="high,medium,low")
    pipeline.add_argument("--frames", type=int, default=200)
    pipeline.add_argument("--threads", type=int, default=0, help="intra-op threads")
    pipeline.add_argument("--out", help="also write JSON here")
    pipeline.set_defaults(func=cmd_bench_pipeline)

    thermal = sub.add_parser("thermal", help="temperature sources, thresholds and mode")
    thermal.add_argument("--config")
    thermal.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    thermal.add_argument("--interval", type=float, default=2.0)
    thermal.set_defaults(func=cmd_thermal)

    model = sub.add_parser("model", help="model tools")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    imp = model_sub.add_parser("import-darknet", help="darknet cfg + weights -> ONNX")
    imp.add_argument("cfg")
    imp.add_argument("weights")
    imp.add_argument("out")
    imp.add_argument("--names", help="class names file (default: coco.names beside the cfg)")
    imp.set_defaults(func=cmd_model_import_darknet)
    info = model_sub.add_parser("info", help="inputs, outputs, layout, classes, size")
    info.add_argument("file")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_model_info)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)

    from edged.cli_tools import add_tool_commands

    add_tool_commands(sub)
    return parser


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="take model settings from this config file")
    parser.add_argument("--model", help="ONNX model (default: model.path from the config)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from edged.logging import setup_logging

    # One-shot commands keep stdout for their output; `run` reconfigures from its config.
    setup_logging(LoggingConfig(level="warning"), "cli")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fail(ExitCode.CONFIG, str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
