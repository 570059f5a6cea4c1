"""The incremental stream reader: bytes in any chunking in, whole messages out (sans-IO, on
the codec in :mod:`framebus.wire`).

Invariants of :class:`FrameReader`:

* It never allocates more than ``max_header_len`` + ``max_payload_len`` for one message, and it
  checks both lengths (and the plane layout) *before* allocating the payload buffer.
* It yields a message only when every byte of it has arrived: a reader never sees half a frame.
* Bytes after a message stay buffered for the next one; at EOF, a partial message is a
  :class:`ProtocolError` ("truncated"), never a short frame.
* Consecutive messages of a stream mostly share their shape (camera, format, size, planes):
  a shape validated once is remembered (``ShapeCache``), so later messages with exactly the
  same shape fields skip re-validating them; anything else takes the full validation.
* Reads follow PROTOCOL.md's read-ahead rule (R1, R2): at a message boundary ``writable()`` is
  a ``BOUNDARY_READ``-byte buffer (one read takes a whole shm or STATE message, or a frame's
  prefix, header and first payload bytes); once a message has begun it is exactly the rest of
  that message, never more. Bytes past a message (possible on FIFO streams only: the daemon
  keeps at most one unread message in an shm pipe) wait for ``next_message()``.
* A STATE message's reason is checked (UTF-8, rule T4) before the message is returned.
"""

from __future__ import annotations

from enum import IntEnum

from framebus.errors import ProtocolError
from framebus.wire import (
    DEFAULT_MAX_HEADER_LEN,
    DEFAULT_MAX_PAYLOAD_LEN,
    PREFIX_LEN,
    SHM_MESSAGE_LEN,
    FrameHeader,
    Message,
    ShapeCache,
    StateHeader,
    decode_header,
    decode_prefix,
    decode_shm_message,
    decode_state_reason,
)

BOUNDARY_READ = 4096  # bytes asked for at a message boundary (PROTOCOL.md rule R1)
_EMPTY = memoryview(b"")


class _Stage(IntEnum):
    PREFIX = 0
    HEADER = 1
    PAYLOAD = 2


class FrameReader:
    """Incremental reader: give it bytes in any chunking, take whole messages out.

    Two ways in, one state machine:

    * ``feed(data)`` then ``next_message()`` until it returns None (h11 style);
    * zero copy: drain ``next_message()`` until None, write straight into ``writable()`` (e.g.
      with ``os.readv``), then ``commit(n)`` and ``next_message()`` again.

    With ``reuse_buffer=True`` every payload is a view into one buffer that the next message
    overwrites (the buffer is replaced, not resized, when a larger message arrives, so older
    views stay valid memory); otherwise each message gets a buffer of its own.
    """

    def __init__(
        self,
        max_header_len: int = DEFAULT_MAX_HEADER_LEN,
        max_payload_len: int = DEFAULT_MAX_PAYLOAD_LEN,
        reuse_buffer: bool = False,
    ) -> None:
        self.max_header_len = max_header_len
        self.max_payload_len = max_payload_len
        self.reuse_buffer = reuse_buffer
        self._pending = bytearray()  # fed but not yet consumed
        self._stage = _Stage.PREFIX
        self._prefix = bytearray(PREFIX_LEN)
        self._header_buf = bytearray(max_header_len)
        self._payload = bytearray()
        self._filled = 0  # bytes of the current stage received so far
        self._need = PREFIX_LEN  # bytes the current stage needs in total
        self._payload_len = 0
        self._header: FrameHeader | StateHeader | None = None
        self._shapes: ShapeCache = {}
        self._ready: Message | None = None
        self._boundary = bytearray(BOUNDARY_READ)
        self._in_boundary = False  # writable() handed out the boundary buffer

    @property
    def at_boundary(self) -> bool:
        """True when no partial message is buffered."""
        return self._stage is _Stage.PREFIX and self._filled == 0 and not self._pending

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes; parse them with ``next_message()``."""
        self._pending += data

    def writable(self) -> memoryview:
        """Where the next bytes go: at a message boundary a ``BOUNDARY_READ``-byte buffer,
        inside a message exactly the rest of the current stage (zero-copy input)."""
        if self._pending or self._ready is not None:
            raise RuntimeError("drain next_message() before writing into writable()")
        if self._stage is _Stage.PREFIX and self._filled == 0:
            self._in_boundary = True
            return memoryview(self._boundary)
        return self._target()

    def commit(self, count: int) -> None:
        """Record that ``count`` bytes were written into ``writable()``."""
        if self._in_boundary:
            self._in_boundary = False
            if not 0 <= count <= BOUNDARY_READ:
                raise ValueError(f"commit({count}) exceeds the {BOUNDARY_READ} bytes asked")
            self._take_boundary(count)
            return
        if not 0 <= count <= self._need - self._filled:
            raise ValueError(f"commit({count}) exceeds the {self._need - self._filled} bytes asked")
        self._filled += count
        if self._filled == self._need:
            self._advance()

    def _take_boundary(self, count: int) -> None:
        """Parse a boundary read: an shm message of a known shape takes the fast path; any
        other whole message with at most a short payload is decoded in place; anything else
        goes through ``feed``."""
        if count == SHM_MESSAGE_LEN:
            header = decode_shm_message(self._boundary, self.max_payload_len, self._shapes)
            if header is not None:
                self._ready = Message(header, _EMPTY)
                return
        data = memoryview(self._boundary)[:count]
        if count >= PREFIX_LEN:
            header_len, payload_len = decode_prefix(data[:PREFIX_LEN], self.max_header_len,
                                                    self.max_payload_len)
            end = PREFIX_LEN + header_len + payload_len
            if end <= count:
                self._header = decode_header(data[PREFIX_LEN : PREFIX_LEN + header_len],
                                             payload_len, self.max_payload_len, self._shapes)
                if not self.reuse_buffer or len(self._payload) < payload_len:
                    self._payload = bytearray(payload_len)
                self._payload[:payload_len] = data[end - payload_len : end]
                self._payload_len = payload_len
                self._stage = _Stage.PAYLOAD
                self._complete()
                if end < count:
                    self._pending += data[end:]
                return
        self._pending += data

    def next_message(self) -> Message | None:
        """The next whole message, or None when more bytes are needed."""
        while self._ready is None and self._pending:
            target = self._target()
            count = min(len(target), len(self._pending))
            target[:count] = self._pending[:count]
            del self._pending[:count]
            self.commit(count)
        message, self._ready = self._ready, None
        return message

    def close(self) -> None:
        """Declare EOF (after draining ``next_message()``): a partial message is an error."""
        if self._ready is not None:
            raise RuntimeError("drain next_message() before close()")
        if not self.at_boundary:
            raise ProtocolError(
                f"truncated message at EOF: {self._stage.name.lower()} has "
                f"{self._filled + len(self._pending)} of {self._need} bytes"
            )

    def _target(self) -> memoryview:
        if self._stage is _Stage.PREFIX:
            return memoryview(self._prefix)[self._filled : PREFIX_LEN]
        if self._stage is _Stage.HEADER:
            return memoryview(self._header_buf)[self._filled : self._need]
        return memoryview(self._payload)[self._filled : self._need]

    def _advance(self) -> None:
        if self._stage is _Stage.PREFIX:
            header_len, self._payload_len = decode_prefix(
                self._prefix, self.max_header_len, self.max_payload_len
            )
            self._stage, self._filled, self._need = _Stage.HEADER, 0, header_len
        elif self._stage is _Stage.HEADER:
            self._header = decode_header(
                memoryview(self._header_buf)[: self._need], self._payload_len,
                self.max_payload_len, self._shapes,
            )
            if not self.reuse_buffer or len(self._payload) < self._payload_len:
                self._payload = bytearray(self._payload_len)  # validated above: bounded
            self._stage, self._filled, self._need = _Stage.PAYLOAD, 0, self._payload_len
            if self._payload_len == 0:
                self._advance()
        else:
            self._complete()

    def _complete(self) -> None:
        header = self._header
        assert header is not None
        payload = memoryview(self._payload)[: self._payload_len]
        if isinstance(header, StateHeader):
            decode_state_reason(payload)  # rule T4, before anyone sees the message
        self._ready = Message(header, payload)
        self._stage, self._filled, self._need = _Stage.PREFIX, 0, PREFIX_LEN
        self._header = None
