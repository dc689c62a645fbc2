"""The spawn target of every worker: dispatch to its module and turn errors into exit codes."""

from __future__ import annotations

import importlib
import sys

import structlog

from edged.exitcodes import ExitCode
from edged.workers.base import WorkerArgs


def main(args: WorkerArgs) -> None:
    from edged.backends.base import ModelUnavailable
    from edged.store import StoreError

    # Import only this worker's module: the sink has no use for ONNX Runtime's memory.
    module = importlib.import_module(f"edged.workers.{args.worker.kind.title}")
    try:
        code = module.run(args)
    except (ModelUnavailable, StoreError) as exc:
        # Retrying will not help: the supervisor stops with this code instead of looping.
        structlog.get_logger().error("worker.unavailable", error=str(exc))
        code = ExitCode.UNAVAILABLE
    except Exception:
        structlog.get_logger().exception("worker.crashed")
        code = ExitCode.SOFTWARE
    sys.exit(int(code))
