"""What a config reload (SIGHUP) changes: applied live, a worker restart, or refused."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from edged.config import Config
from edged.ipc.control import Worker

# Sizes of shared-memory segments and the status location are fixed for the daemon's life.
_FROZEN = {
    ("queues", None), ("source", "max_width"), ("source", "max_height"),
    ("daemon", "runtime_dir"), ("detect", "max_det"), ("metrics", None),
}
# Read by a worker only at start: a change restarts that worker.
_RESTARTS = {
    ("source", None): Worker.CAPTURE,
    ("model", None): Worker.INFERENCE,
    ("models", None): Worker.INFERENCE,
    ("store", "path"): Worker.SINK,
}
# Applied live by the worker that uses them (or by the supervisor itself).
_LIVE = {("source", "classes"), ("source", "min_score"), ("source", "name")}


@dataclass
class ReloadPlan:
    changed: list[str] = field(default_factory=list)
    restart: set[Worker] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused


def _changed_keys(old: Config, new: Config) -> list[tuple[str, str]]:
    keys = []
    for section in type(old).model_fields:
        before, after = getattr(old, section), getattr(new, section)
        if not isinstance(before, BaseModel):  # a plain value such as `models:`
            if before != after:
                keys.append((section, "*"))
            continue
        for name in type(before).model_fields:
            if getattr(before, name) != getattr(after, name):
                keys.append((section, name))
    return keys


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    plan = ReloadPlan()
    for section, name in _changed_keys(old, new):
        dotted = section if name == "*" else f"{section}.{name}"
        plan.changed.append(dotted)
        if (section, name) in _FROZEN or (section, None) in _FROZEN:
            plan.refused.append(dotted)
        elif (section, name) in _LIVE:
            continue
        elif (worker := _RESTARTS.get((section, name)) or _RESTARTS.get((section, None))):
            plan.restart.add(worker)
    return plan
