"""What ``docker service logs`` asks for and what it gets: the query and one log line."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class LogQuery:
    """What to read: the containers of one service or one task."""

    service: str = ""
    task: str = ""
    follow: bool = False
    tail: str = "all"
    since: str = ""
    tty: bool = False

    def params(self) -> dict[str, str]:
        return {"service": self.service, "task": self.task, "follow": "1" if self.follow else "0",
                "tail": self.tail, "since": self.since, "tty": "1" if self.tty else "0"}

    @classmethod
    def from_params(cls, q: dict) -> LogQuery:
        return cls(service=q.get("service", ""), task=q.get("task", ""), follow=q.get("follow") == "1",
                   tail=q.get("tail") or "all", since=q.get("since", ""), tty=q.get("tty") == "1")


@dataclass(slots=True)
class LogLine:
    task_id: str
    stream: int  # 1 stdout, 2 stderr
    timestamp: str  # RFC 3339 with nanoseconds, as the engine gives it
    data: bytes  # the line, newline included
    node_id: str = ""

    def to_json(self) -> str:
        return json.dumps({"t": self.task_id, "s": self.stream, "ts": self.timestamp,
                           "l": self.data.decode("latin-1")})

    @classmethod
    def from_json(cls, raw: str | bytes) -> LogLine:
        d = json.loads(raw)
        return cls(d["t"], int(d["s"]), d["ts"], d["l"].encode("latin-1"))
