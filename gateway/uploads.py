"""Receiving a multipart upload as a stream: form fields kept, the file part fed to a Spooler.

`request.form()` would buffer the file to a temporary file before we can look at it and puts
no limit on its size; parsing `request.stream()` ourselves validates while the bytes arrive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import BadRequest, GatewayError
from gateway.jsonl import Spooler

_MAX_FIELD_BYTES = 64 << 10
MAX_FILENAME = 512  # the database column


@dataclass
class Upload:
    fields: dict[str, list[str]] = field(default_factory=dict)
    filename: str | None = None

    def get(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None


async def receive_upload(
    content_type_header: str,
    body: AsyncIterator[bytes],
    spooler: Spooler,
    on_file: Callable[[Upload], None] | None = None,
    after_chunk: Callable[[], Awaitable[None]] | None = None,
) -> Upload:
    """Stream the request body through a multipart parser into `spooler`.

    `on_file(upload)` runs when the file part starts, with the form fields sent before it;
    `after_chunk()` after each piece of the body has been parsed (to forward what it made).
    An error does not stop reading: the client is still sending, and answering before the
    body is consumed would reach it as a broken connection instead of a 400.
    """
    content_type, options = parse_options_header(content_type_header)
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadRequest("Upload the file as multipart/form-data.", param="file")

    upload = Upload()
    error: GatewayError | None = None
    state: dict[str, object] = {}
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    field_data = bytearray()

    def on_part_begin() -> None:
        headers.clear()
        field_data.clear()
        state.update(name=None, is_file=False)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if b"filename" in disp:
            if upload.filename is not None:
                raise BadRequest("Send exactly one file part.", param="file")
            state["is_file"] = True
            upload.filename = disp[b"filename"].decode("utf-8", "replace") or "upload.jsonl"
            if len(upload.filename) > MAX_FILENAME:
                raise BadRequest(f"The file name is longer than {MAX_FILENAME} characters.",
                                 param="file", code="filename_too_long")
            if on_file is not None:
                on_file(upload)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.get("is_file"):
            spooler.feed(data[start:end])
        else:
            field_data.extend(data[start:end])
            if len(field_data) > _MAX_FIELD_BYTES:
                raise BadRequest(f"Form field {state['name']!r} is too large.")

    def on_part_end() -> None:
        if not state.get("is_file"):
            name = str(state.get("name") or "")
            upload.fields.setdefault(name, []).append(field_data.decode("utf-8", "replace"))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    async for chunk in body:
        if error is not None or not chunk:
            continue  # drain
        try:
            parser.write(chunk)
        except GatewayError as e:
            error = e
            continue
        except Exception as e:  # the multipart parser's own errors
            error = BadRequest(f"Malformed multipart body: {e}", param="file")
            continue
        if after_chunk is not None:
            try:
                await after_chunk()
            except GatewayError as e:
                error = e
    if error is not None:
        raise error
    try:
        parser.finalize()
    except Exception as e:
        raise BadRequest(f"Malformed multipart body: {e}", param="file") from e
    if upload.filename is None:
        raise BadRequest("No file part in the upload: send the JSONL as 'file'.", param="file")
    return upload
