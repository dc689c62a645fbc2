"""Snapshots: a JPEG of the best frame of each event, its path in the event row, deleted with it.

The pixels live in the inference worker and the events in the sink, so the work is split, and
nothing but a file name is shared between them (no frame is copied to another process):

* Inference (`SnapshotWriter.offer`, with the detections it emits for an inferred frame): per
  track, when the score beats the track's last snapshot by `min_gain` (or it has none yet), it
  encodes a JPEG (the whole frame with the box drawn, or a crop) at most `max_per_s` times a
  second, tracks without a snapshot first, and atomically replaces
  `<dir>/pending/<source>/<track_id>-<first_seen µs>.jpg`. A track unseen for longer than
  event_gap_s starts over, exactly as its event does in the sink, so `first_seen` (the wall
  time of the event's first observed frame) names the event on both sides.
* Sink (`SnapshotStore.claim`, when an event ends): moves that file to
  `<dir>/<YYYY-MM-DD>/<uid>.jpg` and the path goes into the event row in the transaction that
  marks the event ended (`edged.store.batch`).
* Retention: a trigger (schema v4) queues the path of every deleted event in `snapshot_trash`,
  whatever deleted it; `SnapshotStore.collect` (at each prune) deletes those files, the oldest
  snapshots while the folder is over `max_mb` (clearing their paths), and pending files and day
  folders older than retention (left by a crash before their event was committed).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import structlog

from edged.config import SnapshotConfig
from edged.store.db import write_transaction
from edged.vision.detections import Detections

log = structlog.get_logger()

PENDING = "pending"
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_TRASH_CHUNK = 1000
_BOX_BGR = (0, 200, 255)


def pending_path(root: Path, source: str, track_id: int, first_seen: float) -> Path:
    """Where inference keeps the best snapshot so far of the event that began at first_seen."""
    return root / PENDING / _UNSAFE.sub("_", source) / f"{track_id}-{round(first_seen * 1e6)}.jpg"


def final_path(root: Path, uid: str, first_seen: float) -> Path:
    day = datetime.fromtimestamp(first_seen, UTC).strftime("%Y-%m-%d")
    return root / day / f"{uid}.jpg"


class SnapshotWriter:
    """Inference side: decides which frames become snapshots and writes them."""

    def __init__(self, cfg: SnapshotConfig, event_gap_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.event_gap_s, self.clock = cfg, event_gap_s, clock
        # (source, track_id) -> [first_seen, last_seen, score of the last snapshot or -1]
        self._tracks: dict[tuple[str, int], list[float]] = {}
        self._burst = max(1.0, cfg.max_per_s)
        self._tokens, self._refilled = self._burst, clock()
        self.written = 0
        self.deferred = 0  # improvements not written for want of a token (rate limit)

    def offer(self, image: np.ndarray, wall_time: float, source: str, dets: Detections,
              names: Sequence[str]) -> int:
        """One inferred frame's emitted (tracked, filtered) detections; returns files written."""
        self._forget(wall_time)
        if not len(dets) or dets.track_ids is None:
            return 0
        wanted: list[tuple[bool, float, int, list[float]]] = []
        for i, (track_id, score) in enumerate(zip(dets.track_ids.tolist(),
                                                  dets.scores.tolist(), strict=True)):
            key = (source, int(track_id))
            state = self._tracks.get(key)
            if state is None or abs(wall_time - state[1]) > self.event_gap_s:
                state = [wall_time, wall_time, -1.0]  # a new event starts with this frame
                self._tracks[key] = state
            state[1] = wall_time
            if state[2] < 0 or score >= state[2] + self.cfg.min_gain:
                wanted.append((state[2] >= 0, state[2] - score, i, state))
        if not wanted:
            return 0
        self._refill()
        written = 0
        for _, _, i, state in sorted(wanted, key=lambda w: (w[0], w[1])):
            if self._tokens < 1:
                self.deferred += len(wanted) - written
                break
            self._tokens -= 1
            track_id, score = int(dets.track_ids[i]), float(dets.scores[i])
            cid = int(dets.class_ids[i])
            label = names[cid] if 0 <= cid < len(names) else f"class_{cid}"
            path = pending_path(self.cfg.dir, source, track_id, state[0])
            if self._write(path, image, dets.boxes[i], f"{label} {score:.2f}"):
                state[2] = score
                written += 1
        self.written += written
        return written

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self.cfg.max_per_s)
        self._refilled = now

    def _forget(self, wall_time: float) -> None:
        """Drop tracks whose event has ended (keeps the table as small as the open events)."""
        if len(self._tracks) < 64:
            return
        stale = [k for k, s in self._tracks.items() if abs(wall_time - s[1]) > self.event_gap_s]
        for key in stale:
            del self._tracks[key]

    def _write(self, path: Path, image: np.ndarray, box: np.ndarray, caption: str) -> bool:
        jpeg = encode(image, box, caption, self.cfg)
        if jpeg is None:
            return False
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(jpeg)
            os.replace(tmp, path)  # the sink never sees half a file
        except OSError as exc:
            log.warning("snapshot.write_failed", path=str(path), error=str(exc))
            return False
        return True


def encode(image: np.ndarray, box: np.ndarray, caption: str, cfg: SnapshotConfig) -> bytes | None:
    """JPEG of `image` with the box drawn (style box) or of the box alone (style crop)."""
    import cv2  # here: the sink imports this module too, and never encodes

    height, width = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    if cfg.style == "crop":
        mx, my = (x2 - x1) * cfg.crop_margin, (y2 - y1) * cfg.crop_margin
        left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
        right, bottom = min(width, int(np.ceil(x2 + mx))), min(height, int(np.ceil(y2 + my)))
        if right <= left or bottom <= top:
            return None
        picture = image[top:bottom, left:right]  # a view: no copy of the frame
    else:
        picture = image.copy()  # drawing must not touch the frame the pipeline uses
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        thickness = max(1, round(max(height, width) / 400))
        cv2.rectangle(picture, p1, p2, _BOX_BGR, thickness)
        cv2.putText(picture, caption, (p1[0], max(12, p1[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thickness, _BOX_BGR, thickness, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    return buf.tobytes() if ok else None


class SnapshotStore:
    """Sink side: claims an ended event's snapshot; deletes what retention prunes."""

    def __init__(self, cfg: SnapshotConfig) -> None:
        self.cfg = cfg

    def claim(self, uid: str, source: str, track_id: int | None, first_seen: float) -> str | None:
        """Move the event's pending snapshot into place; its path, or None when it has none."""
        if track_id is None:
            return None
        target = final_path(self.cfg.dir, uid, first_seen)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(pending_path(self.cfg.dir, source, track_id, first_seen), target)
        except FileNotFoundError:
            # None written (rate limit), or claimed by an earlier attempt of this commit.
            return str(target) if target.exists() else None
        except OSError as exc:
            log.warning("snapshot.claim_failed", uid=uid, error=str(exc))
            return None
        return str(target)

    def collect(self, conn: sqlite3.Connection, retention_days: float, now_wall: float) -> int:
        """Delete the files of pruned events, then enforce max_mb; returns files deleted.
        Must not run inside a transaction."""
        deleted = collect_trash(conn)
        deleted += self._remove_expired(now_wall - retention_days * 86_400.0)
        deleted += self._enforce_cap(conn)
        return deleted

    def _remove_expired(self, cutoff: float) -> int:
        root, removed = self.cfg.dir, 0
        cutoff_day = datetime.fromtimestamp(cutoff, UTC).strftime("%Y-%m-%d")
        if root.is_dir():
            for day in root.iterdir():
                # A whole day older than retention: every event row of it is gone.
                if day.is_dir() and _DAY.match(day.name) and day.name < cutoff_day:
                    removed += sum(1 for _ in day.iterdir())
                    shutil.rmtree(day, ignore_errors=True)
        for path in (root / PENDING).glob("*/*.jpg"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    def _enforce_cap(self, conn: sqlite3.Connection) -> int:
        cap = int(self.cfg.max_mb * 1024 * 1024)
        total = _folder_bytes(self.cfg.dir)
        deleted = 0
        while total > cap:
            rows = conn.execute("SELECT id, snapshot FROM events WHERE snapshot IS NOT NULL"
                                " ORDER BY last_seen LIMIT 100").fetchall()
            if not rows:
                break
            done: list[tuple[int]] = []
            for event_id, path in rows:
                if total <= cap:
                    break
                with contextlib.suppress(OSError):
                    total -= os.stat(path).st_size
                    os.unlink(path)
                    deleted += 1
                done.append((event_id,))  # a file already gone loses its path too
            with write_transaction(conn):
                conn.executemany("UPDATE events SET snapshot = NULL WHERE id = ?", done)
        if deleted:
            log.info("snapshot.pruned", files=deleted, reason="size", limit_bytes=cap)
        return deleted


def collect_trash(conn: sqlite3.Connection) -> int:
    """Delete the snapshot files of deleted events (queued by the schema-v4 trigger)."""
    deleted = 0
    while True:
        rows = conn.execute(f"SELECT rowid, path FROM snapshot_trash LIMIT {_TRASH_CHUNK}"
                            ).fetchall()
        if not rows:
            return deleted
        for _, path in rows:
            try:
                os.unlink(path)
                deleted += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("snapshot.delete_failed", path=path, error=str(exc))
        with write_transaction(conn):
            conn.executemany("DELETE FROM snapshot_trash WHERE rowid = ?",
                             [(r[0],) for r in rows])


def _folder_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total
