"""Stream cursors: `"<epoch>:<seq>"`. A cursor from another database epoch means "start
again", never a silent gap."""


class BadCursor(ValueError):
    """Why a resume cursor cannot be used; the message is shown to the client."""


def parse_cursor(text: str, epoch: str, head: int) -> int:
    """The seq to resume after, or `BadCursor` saying why the cursor cannot be resumed."""
    cursor_epoch, sep, seq_text = text.rpartition(":")
    if not sep or not cursor_epoch or not seq_text.isascii() or not seq_text.isdigit():
        raise BadCursor("malformed cursor: expected '<epoch>:<seq>'")
    if cursor_epoch != epoch:
        raise BadCursor("cursor is from another database epoch; starting from now")
    seq = int(seq_text)
    if seq > head:
        raise BadCursor("cursor is ahead of the stream; starting from now")
    return seq
