"""Pooled provider connections, checked for a dropped one without giving up the event loop.

Before it reuses a pooled connection, urllib3 asks whether the provider closed it meanwhile
(`HTTPConnection.is_connected`: has the idle socket anything to read?). It asks with
`select.poll`, which gevent's monkey-patching replaces with one that waits for the loop's
next turn even for a zero timeout: every provider call on a pooled connection went to the
back of the loop, behind every stream's tokens, before it was sent. The kernel's own poll,
asked the same question, never waits (docs/token-path-profile.md, fifteenth session).
"""

import select
import socket
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import requests
from gevent.monkey import get_original
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_poll = get_original("select", "poll")  # the kernel's: a zero timeout never blocks


def kernel_poll(sock: socket.socket) -> Callable[[int], list[tuple[int, int]]]:
    """`poll(0)` of `sock` asked of the kernel's own poll: never waits, and an empty list
    when nothing is there (no exception, unlike a `recv` that finds nothing)."""
    poller = _poll()
    poller.register(sock, select.POLLIN)
    return poller.poll


def readable_now(sock: socket.socket) -> bool:
    """True if `sock` has bytes, its end, an error or no file behind it (POLLIN, POLLHUP,
    POLLERR, POLLNVAL): on an idle connection, each means it is not fit for reuse."""
    return bool(kernel_poll(sock)(0))


class _Checked:
    """urllib3's `is_connected`, asked of the kernel's poll (see the module)."""

    sock: socket.socket | None

    @property
    def is_connected(self) -> bool:
        return self.sock is not None and not readable_now(self.sock)


class _Connection(_Checked, HTTPConnection):
    pass


class _TLSConnection(_Checked, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


_POOLS = MappingProxyType({"http": _Pool, "https": _TLSPool})


class CheckedPoolsAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose pools hand out checked connections (urllib3's way to
    choose a manager's pool classes); through a SOCKS proxy, urllib3's own."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager
