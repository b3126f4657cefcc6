"""uvicorn's wsproto WebSocket protocol, with a short path for the fan-out's text sends.

Every live batch is sent to every client, so the server's time per client is what a
fan-out costs. A server's text frame is only a header and the UTF-8 text (RFC 6455
section 5.2: servers never mask, and per-message deflate is off), so on an open,
writable connection it is written here directly instead of through wsproto's state
machine. The same write is offered to the app as an ASGI scope extension,
`omnimetrics.send_text_now` (its `send`): a plain function that writes a text message at
once and returns True, or returns False (and writes nothing) when the connection cannot
take it without waiting. The hub uses it to hand a message to an idle client without waking the
client's sender task. Its `send_many` writes several messages in one write (a catch-up
page: one system call, not one a message). Everything else (the handshake, close frames,
binary messages, a paused or closing transport) goes through uvicorn unchanged; wsproto
keeps no state between whole messages that these writes could upset.
"""

import struct
from typing import Any

from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from wsproto import events
from wsproto.connection import ConnectionState

from stream.ws import SEND_TEXT_NOW

_FIN_TEXT = 0x81  # FIN bit and opcode 1 (text)


def text_frame(text: str) -> bytes:
    """One unmasked, unfragmented WebSocket text frame holding `text`."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((_FIN_TEXT, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, size)
    return header + payload


class FanoutWSProtocol(WSProtocol):
    def handle_connect(self, event: events.Request) -> None:
        super().handle_connect(event)
        extensions = self.scope.get("extensions")
        if extensions is not None:  # uvicorn always makes it; ASGI wants a dict per name
            extensions[SEND_TEXT_NOW] = {"send": self.send_text_now,
                                         "send_many": self.send_texts_now}  # fmt: skip

    # The last frame built: a fan-out writes the same message to every client in turn.
    _last: tuple[str, bytes] = ("", text_frame(""))

    def _open_and_writable(self) -> bool:
        return (
            self.handshake_complete
            and not (self.close_sent or self.response_started or self.disconnected)
            and self.writable.is_set()
            and self.conn.state is ConnectionState.OPEN
            and not self.transport.is_closing()
        )

    def send_text_now(self, text: str) -> bool:
        """Write one text message now if the connection takes it without waiting."""
        if self._open_and_writable():
            last = FanoutWSProtocol._last
            if last[0] is not text:
                last = FanoutWSProtocol._last = (text, text_frame(text))
            self.transport.write(last[1])
            return True
        return False

    def send_texts_now(self, texts: list[str]) -> bool:
        """Write these text messages now, in one write, if the connection is writable."""
        if self._open_and_writable():
            self.transport.write(b"".join(map(text_frame, texts)))
            return True
        return False

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.send" and message.get("bytes") is None:
            if self.send_text_now(message["text"]):
                return
        await super().send(message)
