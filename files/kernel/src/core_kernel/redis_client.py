"""The one place a kernel Redis client is made: from a plain URL, or through Redis Sentinel.

With ``CORE_KERNEL_REDIS_SENTINELS`` set, the client is redis-py's ``Sentinel.master_for``: every
new connection asks the sentinels for the current master, a connection to a demoted master
(READONLY) is dropped, and a refused or timed-out connection is re-resolved on the next try. So
after a failover the same client object reaches the promoted replica; the callers' existing
"Redis is down, back off and retry" paths are all a failover needs. The promoted replica's
script cache is empty: every script goes through redis-py's ``Script`` (EVALSHA, SCRIPT LOAD on
NOSCRIPT, EVALSHA again) or does the same itself (``KernelStore.admit``).

No secret reaches a message: a target describes itself by host:port and master name only, and a
URL through ``redact_url``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from core_kernel.config import KernelConfig, parse_sentinels, redact_url

#: Seconds for one sentinel to answer a master lookup (connect and reply). Sentinels are asked
#: in turn, so a lookup with every sentinel stalled takes at most this x their number; on a LAN
#: a sentinel answers in well under a millisecond.
SENTINEL_TIMEOUT_S = 1.0
#: A connect to the master never waits longer than this unless the caller asks for less.
DEFAULT_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RedisTarget:
    """Where the kernel's Redis is: a URL, or a master name behind sentinels."""

    url: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinel_username: str = ""
    sentinel_password: str = field(default="", repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    db: int = 0

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        """For messages: no password, ever."""
        if self.is_sentinel:
            where = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel master {self.master!r} via {where} db {self.db}"
        return redact_url(self.url)


def target_from_config(config: KernelConfig, url: str | None = None) -> RedisTarget:
    """The config's target; ``url`` (a command's ``--redis-url``, already checked) overrides."""
    if url:
        return RedisTarget(url=url)
    if config.redis_sentinels:
        return RedisTarget(
            sentinels=parse_sentinels(config.redis_sentinels),
            master=config.redis_sentinel_master,
            sentinel_username=config.redis_sentinel_username,
            sentinel_password=config.redis_sentinel_password,
            username=config.redis_username,
            password=config.redis_password,
            db=config.redis_db,
        )
    # A plain URL takes the master's credentials from the secrets file's keys when it has none
    # of its own (config refuses a password in both places).
    return RedisTarget(
        url=config.redis_url, username=config.redis_username, password=config.redis_password
    )


def target_key(config: KernelConfig) -> str:
    """The env key a message should name for the config's target."""
    return "CORE_KERNEL_REDIS_SENTINELS" if config.redis_sentinels else config.redis_url_key


def _auth(username: str | None, password: str | None) -> dict[str, str]:
    """AUTH arguments: a username only with its password (no password: none, the URL's own)."""
    if not password:
        return {}
    return {"password": password, "username": username} if username else {"password": password}


def make_client(
    target: RedisTarget | KernelConfig | str,
    *,
    decode_responses: bool = True,
    socket_timeout: float | None = 5.0,
    socket_connect_timeout: float | None = None,
    **kwargs: Any,
) -> redis.Redis:
    """A client for ``target``. No I/O happens here: the first command connects.

    ``socket_timeout=None`` (or above the block time) for long blocking reads. Other keyword
    arguments (``retry``, ``health_check_interval``, ...) go to every connection to the master.
    """
    if isinstance(target, KernelConfig):
        target = target_from_config(target)
    elif isinstance(target, str):
        target = RedisTarget(url=target)
    connect = (
        DEFAULT_CONNECT_TIMEOUT_S if socket_connect_timeout is None else socket_connect_timeout
    )
    master_kwargs: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect,
        **_auth(target.username, target.password),
        **kwargs,
    }
    if not target.is_sentinel:
        return redis.Redis.from_url(target.url, **master_kwargs)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        "decode_responses": True,
        **_auth(target.sentinel_username, target.sentinel_password),
    }
    data_kwargs = {"db": target.db, **master_kwargs}
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client: redis.Redis = manager.master_for(target.master, **data_kwargs)  # type: ignore[no-untyped-call]
    return client


def with_decoding(client: redis.Redis, decode_responses: bool) -> redis.Redis:
    """A client on the same server (or the same sentinel master) and settings as ``client``,
    decoding replies or not. Its own pool: the two never share a connection."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["decode_responses"] = decode_responses
    if isinstance(pool, SentinelConnectionPool):
        kwargs.pop("connection_pool", None)  # the pool's own proxy; the new pool makes its own
        new_pool: redis.ConnectionPool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            pool.service_name,
            pool.sentinel_manager,
            is_master=pool.is_master,
            check_connection=pool.check_connection,
            connection_class=pool.connection_class,
            **kwargs,
        )
    else:
        new_pool = pool.__class__(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=new_pool)
