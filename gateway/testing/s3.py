"""A real S3 API on loopback for tests: moto in server mode, so the code under test speaks HTTP
(signing, multipart, path-style addressing) exactly as it would to S3."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"


class S3Emulator:
    """`with S3Emulator() as s3:` starts moto on 127.0.0.1 on a free port."""

    def __init__(self) -> None:
        self._server: ThreadedMotoServer | None = None
        self.url = ""

    def start(self) -> S3Emulator:
        # Imported here: moto and boto3 take a while to import and most test runs need neither.
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO; a multipart upload is hundreds of lines.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> S3Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def client(self) -> Any:
        """A boto3 S3 client for this emulator, to look behind the code under test."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def env(self) -> dict[str, str]:
        """AWS_* variables that point an S3 client (obstore, boto3) at this emulator."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.url,
            # obstore refuses plain http unless told.
            "AWS_ALLOW_HTTP": "true",
        }

    def options(self) -> dict[str, str]:
        """The same settings as file store options (obstore's names), for when the environment
        is not to be touched. No bucket: it comes from the URL, and obstore refuses it twice."""
        return {
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "region": REGION,
            "endpoint": self.url,
            "allow_http": "true",
        }
