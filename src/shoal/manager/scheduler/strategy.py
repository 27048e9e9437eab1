"""Ranking strategies: order the feasible nodes for a group of identical tasks (Nomad's rank step).

A strategy maps a node to a sort key; the scheduler keeps the feasible nodes in a heap on that key
and gives each task to the smallest, re-ranking that node after the placement. Keys are tuples whose
first element is the failure penalty: a node on which the service failed :data:`MAX_FAILURES` or more
times within the last :data:`MONITOR_FAILURES` seconds ranks after the others (as in swarmkit).

* ``spread`` (default, Swarm's behaviour): fewest tasks of this service, then fewest tasks in total,
  then fewest recent failures of this service.
* ``binpack``: most reserved resources (CPU + memory fraction), then most tasks in total, so nodes fill
  up (until a filter such as resources or max-replicas rejects them) before others are used.

Placement preferences (``Spread`` over ``node.labels.X`` / ``engine.labels.X``) are applied by the
scheduler before ranking, whatever the strategy. The strategy of a task is named by the service label
:data:`STRATEGY_LABEL`, which the caller copies into ``task["ServiceLabels"]``. More strategies can be
added with :func:`register_strategy`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from shoal.model.labels import STRATEGY

from .nodeinfo import MAX_FAILURES, MONITOR_FAILURES, NodeInfo

STRATEGY_LABEL = STRATEGY
DEFAULT_STRATEGY = "spread"

__all__ = [
    "DEFAULT_STRATEGY",
    "MAX_FAILURES",
    "MONITOR_FAILURES",
    "STRATEGY_LABEL",
    "BinpackStrategy",
    "SpreadStrategy",
    "Strategy",
    "get_strategy",
    "register_strategy",
    "strategy_name",
]


class Strategy:
    """Base class of rankers. Lower :meth:`rank` keys are better."""

    name: ClassVar[str] = ""

    def rank(self, ni: NodeInfo, service_id: str, recent_failures: int) -> tuple[Any, ...]:
        """Sort key of ``ni`` for the next task of ``service_id`` (lower = preferred)."""
        raise NotImplementedError


class SpreadStrategy(Strategy):
    """Swarm's spread: fewest tasks of the service, then fewest tasks overall."""

    name = "spread"

    def rank(self, ni: NodeInfo, service_id: str, recent_failures: int) -> tuple[Any, ...]:
        return (
            recent_failures if recent_failures >= MAX_FAILURES else 0,
            ni.active_by_service.get(service_id, 0),
            ni.active_tasks,
            recent_failures,
        )


class BinpackStrategy(Strategy):
    """Fill the fullest node that still fits first."""

    name = "binpack"

    def rank(self, ni: NodeInfo, service_id: str, recent_failures: int) -> tuple[Any, ...]:
        used = 0.0
        if ni.total_nano_cpus > 0:
            used += ni.reserved_nano_cpus / ni.total_nano_cpus
        if ni.total_memory_bytes > 0:
            used += ni.reserved_memory_bytes / ni.total_memory_bytes
        return (
            recent_failures if recent_failures >= MAX_FAILURES else 0,
            -used,
            -ni.active_tasks,
            -ni.active_by_service.get(service_id, 0),
            recent_failures,
        )


_STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> None:
    """Make ``strategy`` selectable by its ``name``."""
    _STRATEGIES[strategy.name] = strategy


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; :class:`ValueError` if there is none."""
    try:
        return _STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(_STRATEGIES))
        raise ValueError(f"unknown scheduling strategy '{name}' (known: {known})") from None


def strategy_name(task: dict[str, Any]) -> str:
    """Name of the strategy for ``task``: its ``ServiceLabels[STRATEGY_LABEL]``, default ``spread``."""
    labels = task.get("ServiceLabels")
    return (labels.get(STRATEGY_LABEL) if labels else None) or DEFAULT_STRATEGY


register_strategy(SpreadStrategy())
register_strategy(BinpackStrategy())
