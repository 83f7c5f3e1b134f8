"""Start barriers for N clients: every client begins each measured window together.

Barriers surround every point where a scenario scrapes the server's metrics, after its
warm-up and after its measured window (`CoordinatedScraper`): all clients stop, client 0
scrapes, all clients start the next window together. Client 0's scrapes thus bound every
client's measured requests. No clock is
compared: a client goes on when it *sees* that all clients have arrived.

- `Solo`: one client; passing is free.
- `ProcessBarrier`: local client processes (`bakeoff run --local`), a multiprocessing
  barrier.
- `ConfigMapBarrier`: client pods of one Indexed Job. Each pod writes the number of the step
  it reached under its index in a ConfigMap the operator created (a merge patch of its own
  key, so pods never conflict), and reads the ConfigMap until every index shows that step. A
  pod that fails writes "failed: reason" instead, and the others stop at once with it.

Each client also brings the number of successful answers it has seen so far, and `wait`
returns their sum: client 0 then scrapes until the server has counted every client's answers,
not only its own (a server counts a request after it has sent the answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import MutableSequence
from typing import Any, Final, Protocol

import aiohttp

from bakeoff_bench import client as oip
from bakeoff_bench import credentials, server_metrics
from bakeoff_bench.publish import ApiAccess

POLL_S: Final = 0.05
FAILED: Final = "failed: "


class BarrierError(oip.BenchError):
    """Another client failed, or did not reach the step in time; the message says which."""


class Barrier(Protocol):
    index: int
    clients: int

    async def wait(self, step: str, answered: int = 0) -> int:
        """Return once every client reached `step`: the sum of their `answered`."""
        ...

    async def fail(self, reason: str) -> None: ...


class Solo:
    index = 0
    clients = 1

    async def wait(self, step: str, answered: int = 0) -> int:
        return answered

    async def fail(self, reason: str) -> None:
        return None


class ProcessBarrier:
    """Local client processes; `shared` is a `multiprocessing` context's Barrier(clients),
    `counts` its Array("q", clients) of each client's answers."""

    def __init__(
        self,
        shared: threading.Barrier,
        counts: MutableSequence[int],
        index: int,
        clients: int,
        timeout_s: float,
    ) -> None:
        self._shared = shared
        self._counts = counts
        self.index = index
        self.clients = clients
        self._timeout_s = timeout_s

    async def wait(self, step: str, answered: int = 0) -> int:
        self._counts[self.index] = answered
        try:
            await asyncio.to_thread(self._shared.wait, self._timeout_s)
        except threading.BrokenBarrierError:
            raise BarrierError(
                f"client {self.index}: another client process failed or did not reach "
                f"'{step}' within {self._timeout_s:g} s"
            ) from None
        return sum(self._counts[i] for i in range(self.clients))

    async def fail(self, reason: str) -> None:
        self._shared.abort()


def arrived(data: dict[str, str], clients: int, step: int) -> tuple[bool, str | None]:
    """(all clients reached `step`, the first failure reported) from the ConfigMap's data."""
    for index in range(clients):
        value = data.get(str(index), "")
        if value.startswith(FAILED):
            return False, f"client pod {index} failed: {value.removeprefix(FAILED)}"
    reached = [int(data.get(str(i), "0 ").split(" ", 1)[0] or 0) for i in range(clients)]
    return all(r >= step for r in reached), None


def answered_total(data: dict[str, str], clients: int) -> int:
    """The answers every client reported with the step it reached ("<step> <name> #<n>")."""
    total = 0
    for index in range(clients):
        _, _, count = data.get(str(index), "").rpartition(" #")
        total += int(count) if count.isdigit() else 0
    return total


def missing(data: dict[str, str], clients: int, step: int) -> list[int]:
    return [i for i in range(clients) if int(data.get(str(i), "0 ").split(" ", 1)[0] or 0) < step]


class ConfigMapBarrier:
    """Client pods of one Indexed Job; see the module docstring."""

    def __init__(
        self,
        access: ApiAccess,
        namespace: str,
        name: str,
        index: int,
        clients: int,
        timeout_s: float,
    ) -> None:
        self.index = index
        self.clients = clients
        self._url = f"{access.server}/api/v1/namespaces/{namespace}/configmaps/{name}"
        self._headers = {"Authorization": f"Bearer {access.token}"}
        self._ssl = ssl.create_default_context(cafile=access.ca_file)
        self._timeout_s = timeout_s
        self._step = 0

    async def _patch(self, session: aiohttp.ClientSession, value: str) -> None:
        body = {"data": {str(self.index): value}}
        headers = {"Content-Type": "application/merge-patch+json"}
        async with session.patch(self._url, json=body, headers=headers, ssl=self._ssl) as reply:
            if reply.status != 200:
                raise BarrierError(
                    f"barrier {self._url}: HTTP {reply.status}: {await reply.text()}"
                )

    async def _data(self, session: aiohttp.ClientSession) -> dict[str, str]:
        async with session.get(self._url, ssl=self._ssl) as reply:
            if reply.status != 200:
                raise BarrierError(
                    f"barrier {self._url}: HTTP {reply.status}: {await reply.text()}"
                )
            document: dict[str, Any] = await reply.json()
        return dict(document.get("data") or {})

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(headers=self._headers, timeout=aiohttp.ClientTimeout(total=30))

    async def wait(self, step: str, answered: int = 0) -> int:
        self._step += 1
        deadline = time.monotonic() + self._timeout_s
        async with self._session() as session:
            try:
                await self._patch(session, f"{self._step} {step} #{answered}")
                while True:
                    data = await self._data(session)
                    done, failure = arrived(data, self.clients, self._step)
                    if failure:
                        raise BarrierError(f"at '{step}': {failure}")
                    if done:
                        return answered_total(data, self.clients)
                    if time.monotonic() > deadline:
                        late = ", ".join(str(i) for i in missing(data, self.clients, self._step))
                        raise BarrierError(
                            f"client pod(s) {late} did not reach '{step}' within "
                            f"{self._timeout_s:g} s"
                        )
                    await asyncio.sleep(POLL_S)
            except aiohttp.ClientError as error:
                raise BarrierError(f"barrier {self._url}: {error}") from error

    async def fail(self, reason: str) -> None:
        # If this fails too, the others time out instead.
        with contextlib.suppress(aiohttp.ClientError, BarrierError):
            async with self._session() as session:
                await self._patch(session, FAILED + reason[:500])


class CoordinatedScraper(server_metrics.MetricsScraper):
    """The scraper of one of several clients: every settled scrape sits between two barriers
    (at the edges of warm-up and measured windows); only client 0 scrapes the server."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics_url: str | None,
        model_name: str,
        barrier: Barrier,
        secrets: credentials.Credentials = credentials.NO_CREDENTIALS,
    ) -> None:
        url = metrics_url if barrier.index == 0 else None
        super().__init__(session, url, model_name, secrets)
        self.barrier = barrier
        self._edges = 0

    async def settled(
        self, timeout_s: float = server_metrics.SETTLE_TIMEOUT_S
    ) -> server_metrics.MetricsSnapshot | None:
        self._edges += 1
        everyone = await self.barrier.wait(f"window edge {self._edges}", self.answered)
        snapshot = await self.settled_at(everyone, timeout_s)
        # Nobody sends the next window's requests before client 0's scrape is taken: a
        # request counted in this edge's scrape must not also be one of the next window's.
        await self.barrier.wait(f"window edge {self._edges} scraped", self.answered)
        return snapshot
