"""A follower passes an API write to the leader, and tries again only while the write surely did not
reach a leader. Found by the chaos suite (a slow link on the leader): the leader applied a forwarded
``service create``, its answer was lost, the follower sent it again and the client was told
``409 name conflicts with an existing object`` for the service its own request had made."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
import pytest

from shoal.cluster.messages import ForwardedAnswer
from shoal.manager.manager import Manager
from shoal.model.errors import NO_LONGER_LEADER, Unavailable

pytestmark = pytest.mark.looptime  # the retries' pauses run on virtual time


class Leader:
    """The cluster client's forward, answering from a script: an exception to raise or a status."""

    def __init__(self, *script: object) -> None:
        self.script = list(script)
        self.sent = 0

    async def forward(self, leader: str, method: str, path_qs: str, body: bytes, headers: dict) -> ForwardedAnswer:
        self.sent += 1
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        status, text = step  # type: ignore[misc]
        return ForwardedAnswer(status=status, body=text.encode())


def follower(client: Leader) -> SimpleNamespace:
    async def catch_up(rev: int) -> None:
        return None

    return SimpleNamespace(leader_addr="192.168.77.10:2377", client=client, objs=None, _catch_up=catch_up)


async def forward(client: Leader):
    return await Manager.forward(follower(client), "POST", "/services/create", b"{}", {})  # type: ignore[arg-type]


async def test_an_answer_lost_after_sending_is_not_sent_again() -> None:
    applied_then_lost = aiohttp.ServerDisconnectedError()
    client = Leader(applied_then_lost, (409, '{"message": "name conflicts with an existing object"}'))
    with pytest.raises(Unavailable, match="may or may not have been applied"):
        await forward(client)
    assert client.sent == 1


async def test_a_store_time_out_on_the_leader_is_passed_on() -> None:
    client = Leader((503, '{"message": "shoal: the cluster store is unavailable, try again: deadline"}'),
                    (409, '{"message": "name conflicts with an existing object"}'))
    answer = await forward(client)
    assert answer.status == 503 and client.sent == 1


async def test_not_sent_or_not_the_leader_is_tried_again() -> None:
    refused = aiohttp.ClientConnectorError(SimpleNamespace(ssl=None, host="h", port=2377),  # type: ignore[arg-type]
                                           OSError(111, "Connection refused"))
    client = Leader(refused, aiohttp.ConnectionTimeoutError(), (503, f'{{"message": "{NO_LONGER_LEADER}"}}'),
                    (201, '{"ID": "x"}'))
    answer = await forward(client)
    assert answer.status == 201 and client.sent == 4
