"""Consumer library: read framebus frames from a subscriber FIFO as numpy views.

FIFO semantics this module relies on (Linux):

* ``open(O_RDONLY | O_NONBLOCK)`` succeeds at once, writer or not, so opening never hangs;
* ``poll`` on such a descriptor stays silent until a writer attaches and writes (POLLIN) or
  attaches and leaves (POLLHUP), so waiting for a daemon that is not there yet costs no CPU;
* after the writer leaves, ``read`` returns 0 (EOF) and POLLHUP stays raised on that open file,
  so to wait for the next writer (daemon restart) the reader closes and reopens the FIFO.

Payloads are read with ``os.readv`` straight into a buffer the reader reuses, and ``Frame.array``
is a numpy view of that buffer: no copy is made, and the view is valid only until the next frame
is read. Call ``frame.array.copy()`` to keep one.

shm subscribers (``transport: shm``) get the same ``Frame``: the message names a slot in a
shared-memory segment beside the FIFO, which is mapped read-only once and reused for every frame
in it, and ``frame.array`` is a read-only view into the mapping. The daemon does not rewrite that
slot until this reader begins reading its next message, which is why it, too, is valid only
until the next read; ``frame.intact()`` re-checks the slot's stamp.

:mod:`framebus.aio` has the asyncio twin, ``AsyncSubscriber``: the same reading code
(:class:`SubscriberCore`), with its waits handed to the event loop instead of ``poll``.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from framebus.apiclient import post_json
from framebus.errors import FifoError
from framebus.reading import Frame, StreamEvent, SubscriberCore, SubscriberStats, Wait

DEFAULT_REQUEST_DIR = "/run/framebus-requests"  # systemd/framebus.tmpfiles makes it

__all__ = ["Frame", "FrameRequestError", "StreamEvent", "Subscriber", "SubscriberStats",
           "request_frame"]
T = TypeVar("T")


class Subscriber(SubscriberCore):
    """Read frames from a framebus subscriber FIFO (blocking; see :mod:`framebus.aio` for
    asyncio).

    ``timeout`` bounds the wait for each frame (``TimeoutError`` when it passes; None waits
    forever, without spinning; 0 returns a frame that is already there, else raises at
    once). With ``reopen=True`` the subscriber survives daemon restarts: at EOF it reopens
    the FIFO and waits for the next writer; a message cut short by a dying writer is dropped
    (counted in ``stats.truncated``), never delivered. With ``reopen=False`` iteration ends
    at a clean EOF and a cut message raises ``ProtocolError``.

    What the stream says besides frames arrives as :class:`StreamEvent`: a camera's state
    (reconnecting, down, idle, streaming again, with the daemon's reason; the latest per
    camera in ``states``) and ``restart``, a new daemon process writing into the FIFO we still
    hold (seq and epoch start over: compare frames only within one ``frame.instance``).
    ``on_event`` is called with each, in the reading thread; ``stats`` counts them.
    """

    _may_block = True

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def open(self, timeout: float | None = None) -> None:
        """Open the FIFO now (it is otherwise opened by the first read); never blocks on a
        missing writer, waits up to ``timeout`` for the path to appear."""
        if self._fd < 0:
            self._drive(self._open_steps(None if timeout is None else time.monotonic() + timeout))

    def read(self, timeout: float | None = -1.0) -> Frame | None:
        """The next whole frame; None at a clean EOF (``reopen=False``).

        ``timeout`` defaults to the subscriber's; raises TimeoutError when it passes.
        """
        return self._drive(self._read_steps(self._deadline(timeout)))

    def _drive(self, steps: Generator[Wait, bool, T]) -> T:
        """Run ``steps`` to the end, answering each wait by blocking in poll or sleep."""
        try:
            wait = next(steps)
            while True:
                wait = steps.send(self._block(*wait))
        except StopIteration as done:
            value: T = done.value
            return value
        finally:
            steps.close()

    def _block(self, fd: int, seconds: float | None) -> bool:
        if fd < 0:
            time.sleep(seconds or 0.0)
            return False
        return bool(self._poller.poll(-1 if seconds is None else math.ceil(seconds * 1000)))


class FrameRequestError(Exception):
    """The daemon refused or failed a frame request (``status`` and ``error`` say why)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


def request_frame(
    camera: str,
    *,
    url: str = "http://127.0.0.1:8470",
    unix_socket: str | None = None,
    fifo_dir: str | os.PathLike[str] | None = None,
    format: str = "bgr24",
    width: int | None = None,
    height: int | None = None,
    quality: int = 85,
    token: str | None = None,
    timeout: float = 5.0,
    newer_than: int | None = None,
    max_age: float | None = None,
    ca_file: str | os.PathLike[str] | None = None,
) -> Frame:
    """The newest frame of ``camera``, now, through a private FIFO.

    Makes a FIFO in ``fifo_dir`` (default ``$FRAMEBUS_FIFO_DIR`` or ``/run/framebus-requests``,
    the directory systemd/framebus.tmpfiles makes for this; it must be one of the daemon's
    ``http.allowed_fifo_dirs``), opens it for reading without blocking, asks
    the daemon over HTTP to write the newest frame into it, reads that one message, and
    removes the FIFO. Raises FrameRequestError with the daemon's reason on refusal.
    ``newer_than`` waits (within ``timeout``) for a frame with a higher seq; ``max_age``
    refuses a newest frame older than that many seconds (503 ``frame_too_old``).

    Give ``unix_socket`` (the daemon's ``http.unix_socket``, e.g.
    /run/framebus/control.sock): there the daemon knows the calling user and writes into
    that user's FIFO. Over TCP (``url`` and the token) it only writes into FIFOs of its own
    user, since every holder of the token looks alike (403 ``fifo_refused`` otherwise).
    An https:// ``url`` is verified against ``ca_file`` (else ``$FRAMEBUS_CA_FILE``, else the
    system's CAs).
    """
    directory = Path(fifo_dir or os.environ.get("FRAMEBUS_FIFO_DIR", DEFAULT_REQUEST_DIR))
    path = directory / f"request-{os.getpid()}-{secrets.token_hex(6)}.fifo"
    try:
        os.mkfifo(path, 0o620)
    except OSError as exc:
        raise FifoError(f"cannot make a request FIFO in {directory}: {exc.strerror} (give "
                        "fifo_dir= or set $FRAMEBUS_FIFO_DIR to a directory you may write that "
                        "is in the daemon's http.allowed_fifo_dirs)") from None
    os.chmod(path, 0o620)  # the daemon (group) may write, only we read: whatever the umask
    try:
        # The daemon bounds its side by ``timeout`` (the wait for a first frame, then the
        # write); the reader waits as long as the POST may, so a refusal arrives as the
        # daemon's reason (the asker ends the read with EOF), not as a bare TimeoutError.
        with Subscriber(path, timeout=timeout + 5.0) as sub:
            sub.open()
            body: dict[str, object] = {"fifo": str(path), "format": format, "quality": quality,
                                       "timeout": timeout}
            if width:
                body["width"] = width
            if height:
                body["height"] = height
            if newer_than is not None:
                body["newer_than"] = newer_than
            if max_age is not None:
                body["max_age"] = max_age
            answer: list[tuple[int, dict[str, object]]] = []
            failure: list[BaseException] = []

            def ask() -> None:  # the frame may exceed the pipe: read it while the POST waits
                try:
                    answer.append(post_json(url, unix_socket,
                                            f"/v1/cameras/{camera}/snapshot-to-fifo",
                                            body, token, timeout + 5.0, ca_file))
                except BaseException as exc:  # re-raised in the caller's thread
                    failure.append(exc)
                if failure or answer[0][0] != 200:  # no frame will come: end the reader's wait
                    with contextlib.suppress(OSError):  # the reader may have given up already
                        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

            asker = threading.Thread(target=ask, name="request-frame", daemon=True)
            asker.start()
            frame = sub.read()
            asker.join(timeout + 10.0)
            if failure:
                raise failure[0]
            if not answer:
                raise TimeoutError(f"no answer from the daemon within {timeout + 10.0:g}s")
            status, reply = answer[0]
            if status != 200:
                raise FrameRequestError(status, str(reply.get("error", "")),
                                        str(reply.get("detail", "")))
            if frame is None:
                raise FrameRequestError(status, "no_frame", "the daemon closed without a frame")
            return frame
    finally:
        path.unlink(missing_ok=True)
