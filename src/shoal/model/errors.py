"""Errors that the API turns into Docker's ``{"message": ...}`` responses."""

from __future__ import annotations


class StoreError(Exception):
    """The store could not serve a request (unreachable, no quorum, ...): the API answers 503."""


class APIError(Exception):
    """An error with the HTTP status Docker gives it."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidArgument(APIError):
    status = 400

    def __init__(self, desc: str) -> None:
        super().__init__(f"rpc error: code = InvalidArgument desc = {desc}")


class FailedPrecondition(APIError):
    status = 400

    def __init__(self, desc: str) -> None:
        super().__init__(f"rpc error: code = FailedPrecondition desc = {desc}")


class BadRequest(APIError):
    status = 400


class NotFound(APIError):
    status = 404


class Conflict(APIError):
    status = 409


class NameConflict(Conflict):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(
            f"rpc error: code = AlreadyExists desc = name conflicts with an existing object: "
            f"{kind} {name} already exists"
        )


class OutOfSequence(APIError):
    status = 400

    def __init__(self) -> None:
        super().__init__("rpc error: code = Unknown desc = update out of sequence")


class Unavailable(APIError):
    status = 503


# a write refused before it changed anything because the manager that got it does not lead (a follower
# that forwarded it may send it again to the new leader)
NO_LONGER_LEADER = "rpc error: code = Unavailable desc = this manager is no longer the leader"


class Deposed(Unavailable):
    """A write of a manager that no longer leads: the leader key it was fenced with has changed."""

    def __init__(self) -> None:
        super().__init__(NO_LONGER_LEADER)


NOT_A_MANAGER = (
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect this '
    "node to swarm and try again."
)
WORKER_NOT_MANAGER = (
    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. "
    "Please run this command on a manager node or promote the current node to a manager."
)
