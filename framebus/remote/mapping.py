"""PROTOCOL.md messages as zenoh samples (section 15), pure: no session, thread or clock.

A frame crosses hosts as one zenoh sample on ``framebus/<host>/<camera>/<rendition>``:

* the sample's **attachment** is the message's prefix and header exactly as a FIFO carries
  them (16 + 240 bytes from a 1.2 writer), with ``payload_len`` the sample payload's length and
  the shm area zero (``Flags.SHM`` clear);
* the sample's **payload** is the message's payload: the pixels (or the jpeg), or a STATE
  message's reason.

So ``attachment + payload`` is a valid framebus message, and a reader in any language decodes
it with its FIFO codec. ``missed`` in the header is what the *bridge* missed between the two
frames it published; what a remote reader missed it counts itself from ``seq``
(:class:`MissCounter`), since zenoh and the reader's ring drop frames too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from framebus.errors import ProtocolError
from framebus.remote.settings import KEY_PREFIX, NAME
from framebus.wire import (
    DEFAULT_MAX_PAYLOAD_LEN,
    PREFIX_LEN,
    FrameHeader,
    Message,
    StateHeader,
    decode_header,
    decode_prefix,
    decode_state_reason,
    encode_header,
    encode_state,
)

MAX_ATTACHMENT = PREFIX_LEN + 4096  # a header is never longer (DEFAULT_MAX_HEADER_LEN)


def data_key(host: str, camera: str, rendition: str) -> str:
    """The key one export publishes on (and answers "newest frame now" queries at)."""
    return f"{KEY_PREFIX}/{host}/{camera}/{rendition}"


def selector(camera: str, host: str | None = None, rendition: str | None = None) -> str:
    """The key expression a remote reader subscribes to: any host, any rendition unless
    given (``framebus/*/lobby/*``)."""
    return data_key(host or "*", camera, rendition or "*")


def split_key(key: str) -> tuple[str, str, str]:
    """``(host, camera, rendition)`` of a data key; ProtocolError for anything else (a
    wildcard, a chunk that is not a name)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != KEY_PREFIX or not all(map(NAME.fullmatch, parts[1:])):
        raise ProtocolError(f"not a framebus data key: {key[:100]!r}")
    return parts[1], parts[2], parts[3]


def frame_attachment(header: FrameHeader, payload_len: int, missed: int) -> bytes:
    """The attachment of a frame sample: the header with its shm area cleared (the pixels
    travel as the payload), ``missed`` the frames the publisher skipped before this one."""
    if header.shm is not None:
        header = dataclasses.replace(header, shm=None)
    return encode_header(header, payload_len, missed)


def state_sample(header: StateHeader, reason: str) -> tuple[bytes, bytes]:
    """``(attachment, payload)`` of a STATE sample."""
    message = encode_state(header, reason)
    cut = len(message) - decode_prefix(message[:PREFIX_LEN])[1]
    return message[:cut], message[cut:]


def decode_sample(attachment: bytes | bytearray | memoryview, payload: memoryview,
                  max_payload_len: int = DEFAULT_MAX_PAYLOAD_LEN) -> Message:
    """A sample back into a message, with every rule of the FIFO codec; ProtocolError for a
    sample that is not one (no attachment, lengths that disagree, an shm message)."""
    if len(attachment) < PREFIX_LEN:
        raise ProtocolError(f"attachment of {len(attachment)} bytes: no framebus prefix")
    if len(attachment) > MAX_ATTACHMENT:
        raise ProtocolError(f"attachment of {len(attachment)} bytes over {MAX_ATTACHMENT}")
    header_len, payload_len = decode_prefix(memoryview(attachment)[:PREFIX_LEN],
                                            max_payload_len=max_payload_len)
    if len(attachment) != PREFIX_LEN + header_len:
        raise ProtocolError(f"attachment of {len(attachment)} bytes, header_len says "
                            f"{PREFIX_LEN + header_len}")
    if payload_len != len(payload):
        raise ProtocolError(f"payload of {len(payload)} bytes, payload_len says {payload_len}")
    header = decode_header(memoryview(attachment)[PREFIX_LEN:], payload_len, max_payload_len)
    if isinstance(header, StateHeader):
        decode_state_reason(payload)
    elif header.shm is not None:
        raise ProtocolError("an shm message cannot cross hosts: its payload is elsewhere")
    return Message(header, payload)


@dataclass(slots=True)
class MissCounter:
    """What a remote reader missed, from seq alone (per camera; seq holds per instance, and
    stale repeats are not frames).

    ``take(header)`` returns the frames missed since the previous one taken, or None for a
    frame to skip: not newer than one already delivered (a duplicate, or an old frame from a
    slower route).
    """

    last: dict[str, tuple[int, int]] = field(default_factory=dict)  # camera -> (instance, seq)

    def take(self, header: FrameHeader) -> int | None:
        previous = self.last.get(header.camera)
        self.last[header.camera] = (header.instance, header.seq)
        if previous is None or previous[0] != header.instance:
            return 0  # the first frame, or a new daemon: nothing to compare with
        if header.seq <= previous[1]:
            self.last[header.camera] = previous
            return None
        return header.seq - previous[1] - 1
