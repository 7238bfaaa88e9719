"""Moving bytes with a progress display: the upload (a file object whose reads, made by the
OpenAI SDK as it sends the body, drive the bar) and the download of a result file."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO

import openai

from gateway.batchcli.display import Display, Transfer


class ProgressReader(io.RawIOBase):
    """A read-only binary file reporting its position to `transfer` on every read or seek."""

    def __init__(self, raw: IO[bytes], transfer: Transfer) -> None:
        super().__init__()
        self.raw = raw
        self.transfer = transfer

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:  # lets the HTTP client know the size without reading the file
        return self.raw.fileno()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.transfer.update(self.raw.tell())
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        # The HTTP client rewinds before sending (and again on a retry): the bar follows.
        position = self.raw.seek(offset, whence)
        self.transfer.update(position)
        return position

    def tell(self) -> int:
        return self.raw.tell()


def download(client: openai.OpenAI, display: Display, file_id: str, path: Path,
             label: str) -> int:
    """Stream a file's content to `path` (written next to it, then renamed); its size."""
    total = client.files.retrieve(file_id).bytes or None
    tmp = path.with_name(f".{path.name}.part")
    written = 0
    try:
        with display.transfer(f"{label} {path}", total) as bar, \
                client.files.with_streaming_response.content(file_id) as response, \
                tmp.open("wb") as out:
            for chunk in response.iter_bytes(1 << 16):
                out.write(chunk)
                written += len(chunk)
                bar.update(written)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return written
