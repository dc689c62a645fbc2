"""Model tooling on the command line: quantize, eval, build-engine, model convert-ncnn and
`bench model --variants`. `add_tool_commands(sub)` adds them to `edged`'s parser; it must run
after the `bench model` and `model` parsers exist (it extends both)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edged.exitcodes import ExitCode


def add_tool_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = sub.add_parser("quantize", help="INT8 model for ONNX Runtime (dynamic or static QDQ)")
    q.add_argument("model", help="FP32 ONNX model")
    q.add_argument("--mode", choices=["static", "dynamic"], default="static")
    q.add_argument("--out", help="default: <stem>.int8-<mode>.onnx beside the model")
    _frames_args(q, "calib", "calibration frames (static; at most 32 are used)")
    q.add_argument("--size", type=int, default=416, help="letterbox side for calibration")
    q.add_argument("--int8-head", action="store_true", help="quantize the head convs too")
    q.add_argument("--int8-first", action="store_true", help="quantize the first conv too")
    q.add_argument("--reduce-range", choices=["auto", "on", "off"], default="auto",
                   help="7-bit weights (auto: on for x86 without VNNI, see README)")
    q.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    _frames_args(q, "eval", "frames for the agreement report (disjoint from calibration)")
    q.add_argument("--runs", type=int, default=30, help="timed runs for the report")
    q.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads for the report")
    q.add_argument("--report", help="write the report JSON here")
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="mAP50/mAP50-95, P/R against a reference model")
    e.add_argument("model")
    _frames_args(e, "", "frames to evaluate on")
    e.add_argument("--reference", required=True,
                   help="FP32 model whose detections are the pseudo-labels (no ground truth)")
    e.add_argument("--backend", choices=["onnxruntime", "ncnn", "tensorrt"],
                   default="onnxruntime", help="backend for MODEL (the reference runs ORT)")
    e.add_argument("--size", type=int, default=None, help="input side (default: model's)")
    e.add_argument("--conf", type=float, default=0.25, help="operating threshold for P/R")
    e.add_argument("--label-conf", type=float, default=0.25, help="pseudo-label threshold")
    e.add_argument("--threads", type=int)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("build-engine", help="TensorRT engine into the cache (TensorRT 10)")
    b.add_argument("model")
    b.add_argument("--config", help="take model.* (cache_dir, trt_*) from this config")
    b.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    b.add_argument("--size", type=int)
    b.add_argument("--workspace-mb", type=int)
    b.add_argument("--cache-dir")
    _frames_args(b, "calib", "INT8 calibration frames (implicit quantization)")
    b.add_argument("--calib-cache", help="INT8 calibration cache to read/write")
    b.set_defaults(func=cmd_build_engine)

    model_sub = _subparsers(sub.choices["model"])
    c = model_sub.add_parser("convert-ncnn", help="ONNX -> NCNN twins via pnnx")
    c.add_argument("file", help="ONNX model")
    c.add_argument("--sizes", default="416", help="input sides, e.g. 416,320 (one twin each)")
    c.add_argument("--out-dir", help="default: beside the model (where the backend looks)")
    c.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16)")
    c.set_defaults(func=cmd_convert_ncnn)

    bench_model = _subparsers(sub.choices["bench"]).choices["model"]
    bench_model.add_argument("--variants", help="e.g. fp32,int8-dynamic,int8-static,ncnn"
                             "[,trt-fp16]: one interleaved table; builds missing artifacts")
    _frames_args(bench_model, "calib", "calibration frames for a missing int8-static")
    _frames_args(bench_model, "eval", "frames for the agreement mAP50 column")
    bench_model.add_argument("--plot", help="PNG of latency distributions (default: beside "
                             "--out)")
    bench_model.add_argument("--rebuild", action="store_true", help="rebuild artifacts")
    plain = bench_model.get_default("func")
    bench_model.set_defaults(func=lambda args: cmd_bench_variants(args) if args.variants
                             else plain(args))


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _frames_args(parser: argparse.ArgumentParser, prefix: str, what: str) -> None:
    dash = f"{prefix}-" if prefix else ""
    group = parser.add_argument_group(what)
    group.add_argument(f"--{dash}video", help="sample frames from this video")
    group.add_argument(f"--{dash}range", help="video frames start:stop:every, e.g. 0:398:12")
    group.add_argument(f"--{dash}images", help="or every image in this folder")
    group.add_argument(f"--{dash}frames", type=int, help="at most this many frames")


def _frames(args: argparse.Namespace, prefix: str) -> Any:
    from edged.tools.eval import image_frames, parse_range, video_frames

    key = f"{prefix}_" if prefix else ""
    video, images = getattr(args, f"{key}video"), getattr(args, f"{key}images")
    limit = getattr(args, f"{key}frames")
    if video:
        start, stop, every = parse_range(getattr(args, f"{key}range"))
        return video_frames(Path(video), start, stop, every, limit)
    if images:
        return image_frames(Path(images), limit)
    return None


def _fail(code: ExitCode, message: str) -> int:
    print(f"edged: {message}", file=sys.stderr)
    return int(code)


def _guard(fn: Any) -> Any:
    """Errors a user can fix become one line and an exit code, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        from edged.backends.base import ModelUnavailable
        from edged.tools.engine import EngineError
        from edged.tools.ncnn_convert import ConvertError
        from edged.tools.quantize import QuantizeError

        try:
            return int(fn(args))
        except (ModelUnavailable, ConvertError, EngineError, QuantizeError) as exc:
            return _fail(ExitCode.UNAVAILABLE, str(exc))
        except OSError as exc:
            return _fail(ExitCode.NOINPUT, str(exc))
        except ValueError as exc:
            return _fail(ExitCode.USAGE, str(exc))

    return run


def _write(path: str | None, doc: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")


@_guard
def cmd_quantize(args: argparse.Namespace) -> int:
    from edged.config import ModelConfig
    from edged.tools.bench_variants import bench_variants, format_variants_table
    from edged.tools.quantize import default_output, quantize

    model = Path(args.model)
    out = Path(args.out) if args.out else default_output(model, args.mode)
    reduce = {"auto": None, "on": True, "off": False}[args.reduce_range]
    facts = quantize(model, out, args.mode, calibration=_frames(args, "calib"), size=args.size,
                     float_head=not args.int8_head, float_first=not args.int8_first,
                     reduce_range=reduce, method=args.method)
    print(f"wrote {out} ({facts['bytes'] / 1e6:.1f} MB, FP32 {facts['source_bytes'] / 1e6:.1f}"
          f" MB, {facts['float_nodes']} nodes kept in float, reduce_range "
          f"{facts['reduce_range']}, {facts['seconds']} s)")
    base = ModelConfig(path=model, input_size=args.size, intra_op_threads=args.threads or 0)
    name = f"int8-{args.mode}"
    bench = bench_variants(base, ["fp32", name], [args.size], args.runs, 5, None,
                           eval_frames=_frames(args, "eval"), paths={name: out})
    print(format_variants_table(bench))
    _write(args.report, {"quantize": facts, "bench": bench})
    return 0


@_guard
def cmd_eval(args: argparse.Namespace) -> int:
    from edged.config import ModelConfig
    from edged.tools.eval import evaluate, format_eval
    from edged.tools.model_info import describe_model

    frames = _frames(args, "")
    if frames is None:
        raise ValueError("give --video FILE [--range a:b:n] or --images DIR")
    common = {"input_size": args.size, "intra_op_threads": args.threads or 0}
    candidate = ModelConfig(path=Path(args.model), backend=args.backend, **common)
    reference = ModelConfig(path=Path(args.reference), backend="onnxruntime", **common)
    names = describe_model(Path(args.reference))["names"]
    result = evaluate(candidate, reference, frames, conf=args.conf, label_conf=args.label_conf,
                      names=names)
    print(json.dumps(result, indent=1) if args.json else format_eval(result))
    return 0


@_guard
def cmd_build_engine(args: argparse.Namespace) -> int:
    from edged.config import ModelConfig, load_config
    from edged.tools.engine import build_engine_command

    model = load_config(Path(args.config)).config.model if args.config else \
        ModelConfig(path=Path(args.model))
    updates = {k: v for k, v in {
        "path": Path(args.model), "trt_precision": args.precision, "input_size": args.size,
        "trt_workspace_mb": args.workspace_mb,
        "cache_dir": Path(args.cache_dir) if args.cache_dir else None,
        "trt_calibration_cache": Path(args.calib_cache) if args.calib_cache else None,
    }.items() if v is not None}
    path = build_engine_command(model.model_copy(update=updates), _frames(args, "calib"),
                                progress=lambda line: print(f"  {line}", flush=True))
    print(f"engine {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


@_guard
def cmd_convert_ncnn(args: argparse.Namespace) -> int:
    from edged.tools.ncnn_convert import convert_ncnn

    sizes = [int(s) for s in args.sizes.split(",")]
    for param in convert_ncnn(Path(args.file), sizes,
                              out_dir=Path(args.out_dir) if args.out_dir else None,
                              fp16=not args.fp32):
        weights = param.with_suffix(".bin")
        print(f"wrote {param} + {weights.name} ({weights.stat().st_size / 1e6:.1f} MB)")
    return 0


@_guard
def cmd_bench_variants(args: argparse.Namespace) -> int:
    from edged.config import ModelConfig, load_config
    from edged.tools.bench_variants import bench_variants, format_variants_table
    from edged.tools.latency_plot import plot_latencies

    if args.config:
        base = load_config(Path(args.config)).config.model
        base = base.model_copy(update={"path": Path(args.model)}) if args.model else base
    elif args.model:
        base = ModelConfig(path=Path(args.model))
    else:
        raise ValueError("give --model or --config")
    if args.threads is not None:
        base = base.model_copy(update={"intra_op_threads": args.threads,
                                       "ncnn_threads": args.threads})
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    from edged.backends.select import native_size

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [native_size(base) or 640]
    result = bench_variants(base, names, sizes, args.runs, args.warmup,
                            Path(args.image) if args.image else None,
                            calibration=_frames(args, "calib"),
                            eval_frames=_frames(args, "eval"), rebuild=args.rebuild)
    print(format_variants_table(result))
    _write(args.out, result)
    plot = args.plot or (str(Path(args.out).with_suffix(".png")) if args.out else None)
    if plot:
        print(f"wrote {plot_latencies(result, Path(plot))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m edged.cli_tools ...`: the edged CLI with these commands, whether or not
    edged.cli already adds them (used by the tests)."""
    from edged.cli import build_parser
    from edged.config import ConfigError, LoggingConfig
    from edged.logging import setup_logging

    parser = build_parser()
    sub = _subparsers(parser)
    if "quantize" not in sub.choices:
        add_tool_commands(sub)
    args = parser.parse_args(argv)
    setup_logging(LoggingConfig(level="warning"), "cli")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fail(ExitCode.CONFIG, str(exc))


if __name__ == "__main__":
    sys.exit(main())
