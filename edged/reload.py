"""What a config reload (SIGHUP) changes: applied live, a worker restart, or refused."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from edged.config import Config
from edged.ipc.control import Worker, WorkerId

# Sizes of shared-memory segments and the status location are fixed for the daemon's life.
_FROZEN = {
    ("queues", None), ("sources", "max_width"), ("sources", "max_height"),
    ("daemon", "runtime_dir"), ("detect", "max_det"), ("metrics", None),
    ("mqtt", "enabled"),  # the uplink worker exists or not for the daemon's life
}
# Read by a worker only at start: a change restarts that worker.
_RESTARTS = {
    ("sources", None): Worker.CAPTURE,
    ("model", None): Worker.INFERENCE,
    ("models", None): Worker.INFERENCE,
    ("store", "path"): Worker.SINK,
    # The uplink reads its settings at spawn only: the reload channel masks the password.
    ("mqtt", None): Worker.UPLINK,
    ("sync", None): Worker.UPLINK,
}
# Applied live by the worker that uses them (or by the supervisor itself).
_LIVE = {("sources", "classes"), ("sources", "min_score"), ("sources", "name"),
         ("sources", "roi")}


@dataclass
class ReloadPlan:
    changed: list[str] = field(default_factory=list)
    restart: set[WorkerId] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused


def _fields(before: BaseModel, after: BaseModel) -> list[str]:
    return [name for name in type(before).model_fields
            if getattr(before, name) != getattr(after, name)]


def _changed_keys(old: Config, new: Config) -> list[tuple[str, str, int]]:
    """(section, key, source index) of every changed setting; key "*" = a whole value."""
    keys: list[tuple[str, str, int]] = []
    for section in type(old).model_fields:
        before, after = getattr(old, section), getattr(new, section)
        if section == "sources":
            if len(before) != len(after):
                keys.append(("queues", "*", 0))  # a ring per source: like a queue change
                continue
            for index, (was, now) in enumerate(zip(before, after, strict=True)):
                keys += [("sources", name, index) for name in _fields(was, now)]
        elif isinstance(before, BaseModel):
            keys += [(section, name, 0) for name in _fields(before, after)]
        elif before != after:  # a plain value such as `models:`
            keys.append((section, "*", 0))
    return keys


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    plan = ReloadPlan()
    for section, name, index in _changed_keys(old, new):
        dotted = section if name == "*" else (
            f"sources.{index}.{name}" if section == "sources" else f"{section}.{name}")
        plan.changed.append(dotted)
        if (section, name) in _FROZEN or (section, None) in _FROZEN:
            plan.refused.append(dotted)
        elif (section, name) in _LIVE:
            continue
        else:
            if section == "snapshots":  # written by inference, filed by the sink
                plan.restart |= {WorkerId(Worker.INFERENCE), WorkerId(Worker.SINK)}
                continue
            kind = _RESTARTS.get((section, name), _RESTARTS.get((section, None)))
            if kind is not None:  # Worker.CAPTURE is 0: test for None, not truth
                plan.restart.add(WorkerId(kind, index if kind == Worker.CAPTURE else 0))
    return plan
