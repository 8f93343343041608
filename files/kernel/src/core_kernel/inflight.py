"""Orders in flight for MAX_POSITION (issue 14): what admit PASSed and the exchange's position
information may not show yet.

The rule, in one place (admit.lua applies it, this module releases):

* admit.lua adds a record for every entry it PASSes while MAX_POSITION_USD or
  MAX_GROSS_EXPOSURE_USD is on and the positions were known: field ``SYMBOL:trace_id`` of the
  hash ``quantum:kernel:inflight``, value ``micro_usd|expires_ms`` (Redis's clock), added to
  the hash's running sums ``#SYMBOL`` and ``#`` (gross) and to the ZSET
  ``quantum:kernel:inflight_expiry`` by expiry. The same script adds the live sums to the
  check, so two workers on one Redis cannot both pass entries that together exceed a limit:
  admits are serialised by Redis.
* A record expires ``inflight_ttl_ms`` after its admit: the order lease (the worker's whole
  send fits in it) + recvWindow + margin (an ambiguous send can still execute until then) +
  MARKET_DATA_MAX_AGE_MS (a position snapshot used after that was fetched after the order
  could execute). Expired records are dropped by the next admit that reads them.
* The worker releases a record when it knows the outcome: nothing placed (rejected, filter,
  expired, dead-lettered) -> removed now; placed and FILLED -> kept for
  ``settle_ms`` more (MARKET_DATA_MAX_AGE_MS + SETTLE_MARGIN_MS: until every snapshot an admit
  may use was fetched after the fill); placed but still open (a resting LIMIT) or unknown ->
  left to expire. An open order that fills after its record expired is counted again from the
  position information once it fills; between the two it is not counted (documented limit).
"""

from __future__ import annotations

from typing import Any

import redis

from core_kernel.streams import DEFAULT_PREFIX

#: The exchange's position information reflects a fill within this (observed: well below 1 s).
SETTLE_MARGIN_MS = 1000

# Delete a record (ARGV[1] == ''), with its share of the running sums, or shorten its expiry
# (never lengthen it). KEYS[1] the hash, KEYS[2] the expiry ZSET; ARGV[2] 'SYMBOL:trace_id'.
_RELEASE_LUA = """
local v = redis.call('HGET', KEYS[1], ARGV[2])
if not v then return 0 end
local n, exp = string.match(v, '^(%d+)|(%d+)$')
if not n then return redis.error_reply('STATE ' .. KEYS[1] .. ': not an in-flight record') end
if ARGV[1] == '' then
  redis.call('HINCRBY', KEYS[1], '#' .. string.match(ARGV[2], '^[^:]*'), -tonumber(n))
  redis.call('HINCRBY', KEYS[1], '#', -tonumber(n))
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 1
end
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
if until_ms < tonumber(exp) then
  local u = string.format('%.0f', until_ms)
  redis.call('HSET', KEYS[1], ARGV[2], n .. '|' .. u)
  redis.call('ZADD', KEYS[2], u, ARGV[2])
end
return 1
"""


def inflight_key(key_prefix: str = DEFAULT_PREFIX) -> str:
    return f"{key_prefix}kernel:inflight"


def expiry_key(key_prefix: str = DEFAULT_PREFIX) -> str:
    return f"{key_prefix}kernel:inflight_expiry"


def inflight_ttl_ms(config: Any) -> int:
    """How long an admitted entry counts as in flight at most (see the module doc)."""
    return int(
        config.order_lease_ms
        + config.binance_recv_window_ms
        + config.order_lease_margin_ms
        + config.market_data_max_age_ms
    )


def settle_ms(config: Any) -> int:
    """How long a filled order still counts after the worker saw the fill."""
    return int(config.market_data_max_age_ms) + SETTLE_MARGIN_MS


def limits_on(config: Any) -> bool:
    return config.max_position_usd is not None or config.max_gross_exposure_usd is not None


_SCRIPTS: dict[int, Any] = {}


def release(  # noqa: PLR0917 - the record's parts
    client: redis.Redis,
    key: str,
    expiry: str,
    symbol: str,
    trace_id: str,
    keep_ms: int | None,
) -> bool:
    """Release the record of ``trace_id`` now (``keep_ms`` None) or after ``keep_ms``.

    Returns whether there was one.
    """
    script = _SCRIPTS.get(id(client))
    if script is None:
        script = client.register_script(_RELEASE_LUA)
        _SCRIPTS[id(client)] = script
    arg = "" if keep_ms is None else str(int(keep_ms))
    return bool(script(keys=[key, expiry], args=[arg, f"{symbol}:{trace_id}"]))
