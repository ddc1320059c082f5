"""How a process learns of decisions and socket claims published by any instance.

Standalone and Sentinel: :class:`ChannelFeed`, one subscriber connection on
``idtoken:events``. Redis Cluster: :class:`ShardFeed`, sharded pub/sub on the channels of the
tokens whose sessions this process's sockets serve, one :class:`ShardLink` per node that owns
such a channel. Either way a lost connection is never silent: once it is back, every affected
socket re-reads its session (callback with ``None``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from idtoken.store.base import Event
from idtoken.store.connect import Connections
from idtoken.store.events import LocalListeners
from idtoken.store.layout import CHANNEL, shard_channel

log = logging.getLogger("idtoken.store")


def _noop() -> None:
    return None


class Listeners(LocalListeners):
    """Local listeners, plus re-sync of one session (for a re-established shard channel)."""

    def resync(self, session_ids: Sequence[str]) -> None:
        for session_id in session_ids:
            for callback in list(self._by_session.get(session_id, ())):
                self._call(callback, session_id, None)


# ----------------------------------------------------------------------------- event feeds
class ChannelFeed:
    """Standalone and Sentinel: every event on ``idtoken:events``, one connection per process.

    The connection never retries silently: a drop must reach :meth:`run`, which resubscribes
    *and* makes every socket re-read its session (redis-py's own reconnect would resubscribe
    but lose what was published meanwhile). Under Sentinel, reconnecting asks the sentinels
    for the current master, so the feed follows a failover.
    """

    def __init__(self, client: Any, listeners: Listeners) -> None:
        self._client = client
        self._listeners = listeners
        self.connected = asyncio.Event()

    def channel(self, token_id: str) -> str:
        return CHANNEL

    def want(self, token_id: str, session_id: str) -> Callable[[], None]:
        return _noop  # every event reaches every process

    async def settled(self, token_id: str) -> None:
        return None

    async def run(self) -> None:
        delay = 0.05
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self.connected.set()
                delay = 0.05
                # Anything published while we were not subscribed is unknown to us: every
                # local socket re-reads its session.
                self._listeners.resync_all()
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is None or message.get("type") != "message":
                        continue
                    event = Event.decode(message["data"])
                    if event is not None:
                        self._listeners.dispatch(event)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("event subscription lost, reconnecting: %s", type(exc).__name__)
                self.connected.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def aclose(self) -> None:
        return None


class ShardLink:
    """One sharded pub/sub connection to one cluster node (RESP2, never retrying).

    A reader task forwards every reply, or the error that ended the connection, to the feed's
    inbox tagged with this link's id. Commands (SSUBSCRIBE, SUNSUBSCRIBE, PING) are written
    directly; their confirmations arrive through the reader, in order. When the connection is
    silent for :attr:`IDLE` seconds the reader pings, and gives up if the next period is
    silent too (a peer that vanished without closing).
    """

    IDLE = 15.0

    def __init__(self, ident: int, node_name: str, client: Any, inbox: asyncio.Queue[Any]) -> None:
        self.ident = ident
        self.node_name = node_name
        self.channels: set[str] = set()  # SSUBSCRIBE sent on this link, not since undone
        self.unsubscribing: Counter[str] = Counter()  # SUNSUBSCRIBE replies still expected
        self._client = client
        self._inbox = inbox
        self._conn: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._conn = await self._client.connection_pool.get_connection()
        self._reader = asyncio.create_task(self._read(), name=f"idtoken-events-{self.node_name}")

    async def send(self, *args: str) -> None:
        await self._conn.send_command(*args, check_health=False)

    async def _read(self) -> None:
        pinged = False
        try:
            while True:
                reply = await self._conn.read_response(timeout=self.IDLE)
                if reply is None:  # silent for IDLE seconds
                    if pinged:
                        raise TimeoutError("no answer to PING on the event connection")
                    await self.send("PING")
                    pinged = True
                    continue
                pinged = False
                self._inbox.put_nowait((self.ident, reply))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the feed, which owns recovery
            self._inbox.put_nowait((self.ident, exc))

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        with contextlib.suppress(Exception):
            await self._client.aclose()


class ShardFeed:
    """Redis Cluster: sharded pub/sub on the token channels this process's sockets need.

    ``want`` (called by :meth:`RedisStore.listen`) counts interest per channel; the run loop
    subscribes a channel on the connection to the node that owns its slot when the first
    session of the token starts listening, and unsubscribes when the last one stops. There is
    one connection per node that owns a wanted channel, shared by every socket.

    Recovery is per node and never silent: when a node's connection fails (or the node says
    a channel's slot moved away), the topology is re-read, the affected channels are
    subscribed again on their current owners, and once each is confirmed the sessions on it
    re-read their state (callback ``None``). Nodes that keep working are not disturbed.
    """

    SETTLE_TIMEOUT = 2.0

    def __init__(self, conn: Connections, listeners: Listeners) -> None:
        self._conn = conn
        self._cluster = conn.commands
        self._listeners = listeners
        self.connected = asyncio.Event()
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._wanted: dict[str, Counter[str]] = {}  # channel -> session ids listening
        self._live: dict[str, asyncio.Event] = {}  # channel -> set once SSUBSCRIBE confirmed
        self._where: dict[str, int] = {}  # channel -> link id it is subscribed on
        self._links: dict[int, ShardLink] = {}
        self._by_node: dict[str, ShardLink] = {}
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._resync: set[str] = set()  # re-read these channels' sessions once confirmed
        self._stale_topology = False

    def channel(self, token_id: str) -> str:
        return shard_channel(token_id)

    def want(self, token_id: str, session_id: str) -> Callable[[], None]:
        channel = shard_channel(token_id)
        sessions = self._wanted.get(channel)
        if sessions is None:
            sessions = self._wanted[channel] = Counter()
            self._live.setdefault(channel, asyncio.Event())
            self._to_unsubscribe.discard(channel)
            if channel not in self._where:
                self._to_subscribe.add(channel)
                self._wake()
        sessions[session_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            sessions[session_id] -= 1
            if sessions[session_id] <= 0:
                del sessions[session_id]
            if not sessions and self._wanted.get(channel) is sessions:
                del self._wanted[channel]
                self._resync.discard(channel)
                self._to_subscribe.discard(channel)
                if channel in self._where:
                    self._to_unsubscribe.add(channel)
                    self._wake()
                else:
                    self._live.pop(channel, None)

        return release

    async def settled(self, token_id: str) -> None:
        """Wait (bounded) until this process's subscription to the token's channel, if it
        wants one, is confirmed; so that what this process publishes next is heard here."""
        channel = shard_channel(token_id)
        live = self._live.get(channel)
        if channel not in self._wanted or live is None or live.is_set():
            return
        try:
            await asyncio.wait_for(live.wait(), self.SETTLE_TIMEOUT)
        except TimeoutError:
            # Go on (the caller's command will fail if the node is down); the listeners
            # re-read once the subscription is confirmed.
            self._resync.add(channel)

    def _wake(self) -> None:
        self._inbox.put_nowait((0, None))

    # ---- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        delay = 0.05
        retry_in: float | None = None
        first = True
        while True:
            try:
                await self._cluster.initialize()
                if self._stale_topology and not first:
                    await self._cluster.nodes_manager.initialize()
                first = False
                self._stale_topology = False
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except (RedisError, RedisClusterException, OSError) as exc:
                if self.connected.is_set():
                    log.warning(
                        "sharded event subscription incomplete, retrying: %s", type(exc).__name__
                    )
                self.connected.clear()
                self._stale_topology = True
                retry_in, delay = delay, min(delay * 2, 1.0)
            else:
                self.connected.set()
                retry_in, delay = None, 0.05
            try:
                link_id, reply = await asyncio.wait_for(self._inbox.get(), retry_in)
            except TimeoutError:
                continue
            self._handle(link_id, reply)
            while not self._inbox.empty():  # drain a burst before reconciling again
                self._handle(*self._inbox.get_nowait())
            if self._stale_topology:  # a link was lost: resubscribe at once, then back off
                self.connected.clear()

    def _handle(self, link_id: int, reply: Any) -> None:
        link = self._links.get(link_id)
        if link is None:
            return  # a wake-up, or a late reply from a link already closed
        if isinstance(reply, BaseException):
            self._lose(link, reply)
            return
        if not isinstance(reply, list) or len(reply) < 3:
            return  # PONG
        kind, channel, data = reply[0], reply[1], reply[2]
        if kind == "smessage":
            event = Event.decode(data)
            if event is not None:
                self._listeners.dispatch(event)
        elif kind == "ssubscribe":
            if channel in link.channels:
                self._confirmed(channel)
        elif kind == "sunsubscribe":
            if link.unsubscribing[channel] > 0:
                link.unsubscribing[channel] -= 1
                if not link.unsubscribing[channel]:
                    del link.unsubscribing[channel]
            elif channel in link.channels:
                # Not asked for: the slot moved to another node (resharding, failover).
                log.warning("shard channel moved, resubscribing")
                self._unplace(link, channel)
                self._stale_topology = True

    def _confirmed(self, channel: str) -> None:
        live = self._live.get(channel)
        if live is not None:
            live.set()
        if channel in self._resync:
            self._resync.discard(channel)
            self._listeners.resync(list(self._wanted.get(channel, ())))

    def _unplace(self, link: ShardLink, channel: str) -> None:
        """The channel is no longer subscribed on ``link``: subscribe it again, re-read."""
        link.channels.discard(channel)
        self._where.pop(channel, None)
        live = self._live.get(channel)
        if live is not None:
            live.clear()
        if channel in self._wanted:
            self._to_subscribe.add(channel)
            self._resync.add(channel)
        else:
            self._live.pop(channel, None)

    def _lose(self, link: ShardLink, exc: BaseException) -> None:
        log.warning(
            "sharded event connection to %s lost, resubscribing: %s",
            link.node_name,
            type(exc).__name__,
        )
        self._drop(link)
        self._stale_topology = True

    def _drop(self, link: ShardLink) -> None:
        self._links.pop(link.ident, None)
        if self._by_node.get(link.node_name) is link:
            del self._by_node[link.node_name]
        for channel in list(link.channels):
            self._unplace(link, channel)
        for channel in [c for c, i in self._where.items() if i == link.ident]:
            self._where.pop(channel, None)
        task = asyncio.ensure_future(link.aclose())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _reconcile(self) -> None:
        """Bring the subscriptions in line with what is wanted. Raises if a node cannot be
        reached; what could be done is done, the rest is retried."""
        for channel in list(self._to_unsubscribe):
            self._to_unsubscribe.discard(channel)
            if channel in self._wanted:
                continue
            self._live.pop(channel, None)
            link = self._links.get(self._where.pop(channel, 0))
            if link is not None and channel in link.channels:
                link.channels.discard(channel)
                link.unsubscribing[channel] += 1
                try:
                    await link.send("SUNSUBSCRIBE", channel)
                except (RedisError, OSError) as exc:
                    self._lose(link, exc)
        failure: BaseException | None = None
        unreachable: set[str] = set()
        for channel in list(self._to_subscribe):
            if channel not in self._wanted or channel in self._where:
                self._to_subscribe.discard(channel)
                continue
            node = self._cluster.get_node_from_key(channel)
            if node.name in unreachable:
                continue
            link = self._by_node.get(node.name)
            try:
                if link is None:
                    link = await self._open(node.name, node.host, node.port)
                link.channels.add(channel)
                self._where[channel] = link.ident
                self._to_subscribe.discard(channel)
                await link.send("SSUBSCRIBE", channel)
            except (RedisError, OSError) as exc:
                unreachable.add(node.name)
                failure = exc
                if link is not None:
                    self._lose(link, exc)
        if failure is not None:
            raise failure

    async def _open(self, node_name: str, host: str, port: int) -> ShardLink:
        link = ShardLink(
            next(self._ids), node_name, self._conn.node_client(host, port), self._inbox
        )
        try:
            await link.open()
        except BaseException:
            await link.aclose()
            raise
        self._links[link.ident] = link
        self._by_node[node_name] = link
        return link

    async def aclose(self) -> None:
        links, self._links = list(self._links.values()), {}
        self._by_node.clear()
        for link in links:
            await link.aclose()
