"""framebus across hosts, on Eclipse Zenoh (the ``remote`` extra: ``pip install
'framebus[remote]'``).

* :mod:`framebus.remote.bridge`: ``framebus bridge``, an ordinary local shm subscriber of the
  daemon that publishes the renditions the config exports, only while someone listens;
* :mod:`framebus.remote.consumer`: :class:`RemoteSubscriber` (and the asyncio twin), the same
  ``Frame`` as :class:`framebus.client.Subscriber`, newest-wins end to end;
* :mod:`framebus.remote.mapping`: the pure mapping of PROTOCOL.md messages onto zenoh samples
  (docs/PROTOCOL.md, section 15);
* :mod:`framebus.remote.source`: a daemon's camera fed by another host's export
  (``url: zenoh:*/lobby/nv12-1280x720``);
* :mod:`framebus.remote.fleet`: liveliness and ``framebus status --fleet``.

Nothing here is imported by the local daemon unless a camera's URL is ``zenoh:``, so zenoh
stays optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["AsyncRemoteSubscriber", "RemoteSubscriber", "request_remote_frame"]

if TYPE_CHECKING:
    from framebus.remote.aio import AsyncRemoteSubscriber
    from framebus.remote.consumer import RemoteSubscriber
    from framebus.remote.newest import request_remote_frame


def __getattr__(name: str) -> Any:
    # lazy: `import framebus.config` imports framebus.remote.settings, and must not pull the
    # consumer (nor numpy views, nor zenoh) along
    if name == "RemoteSubscriber":
        from framebus.remote.consumer import RemoteSubscriber
        return RemoteSubscriber
    if name == "AsyncRemoteSubscriber":
        from framebus.remote.aio import AsyncRemoteSubscriber
        return AsyncRemoteSubscriber
    if name == "request_remote_frame":
        from framebus.remote.newest import request_remote_frame
        return request_remote_frame
    raise AttributeError(name)
