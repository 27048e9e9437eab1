"""The cluster object's spec (``docker swarm init/update``): Docker's defaults and how requests merge in."""

from __future__ import annotations

import copy

from shoal.model.service import SECOND


def default_cluster_spec() -> dict:
    return {
        "Name": "default", "Labels": {},
        "Orchestration": {"TaskHistoryRetentionLimit": 5},
        "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0, "LogEntriesForSlowFollowers": 500,
                 "ElectionTick": 10, "HeartbeatTick": 1},
        "Dispatcher": {"HeartbeatPeriod": 5 * SECOND},
        "CAConfig": {"NodeCertExpiry": 90 * 24 * 3600 * SECOND},
        "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": False},
    }


def merge_spec(base: dict, override: dict) -> dict:
    """``base`` with every non-null value of ``override`` laid over it (recursively)."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_spec(out[k], v)
        elif v is not None:
            out[k] = v
    return out


def init_overrides(spec: dict) -> dict:
    """``swarm init`` keeps the defaults and takes only the request's non-zero values (Docker merges
    non-nil, non-zero fields; the two pointer fields count when set, even to 0)."""
    out: dict = {}
    for k, v in (spec or {}).items():
        if isinstance(v, dict):
            out[k] = init_overrides(v)
        elif v or (k in ("TaskHistoryRetentionLimit", "KeepOldSnapshots") and v is not None):
            out[k] = v
    return out
