"""The suite's S3: moto's server on loopback, refusing what S3 refuses and moto 5.2 does not.

moto keeps create-only writes (``If-None-Match: *`` on PutObject and CompleteMultipartUpload
answer 412), but stores a body whose ``x-amz-checksum-sha256`` header does not match it. S3
refuses that write (400 ``BadDigest``), and kubetune's integrity rests on it, so this WSGI layer
in front of moto checks the header on every PutObject and UploadPart and answers as S3 does.

``corrupt_next_upload()`` flips one byte of the next body carrying a checksum *before* the check:
data damaged on the way, which the server must refuse (a test that the client sends checksums the
server verifies, not just computes them).
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

BAD_DIGEST = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>BadDigest</Code>'
    "<Message>The SHA256 you specified did not match the calculated checksum.</Message></Error>"
)


class ChecksumVerifyingS3:
    """WSGI middleware: S3's checksum verification in front of moto's application."""

    def __init__(self, app: Callable[[Environ, StartResponse], Iterable[bytes]]) -> None:
        self.app = app
        self.refused_digests = 0
        self._corrupt_next = False
        self._lock = threading.Lock()

    def corrupt_next_upload(self) -> None:
        with self._lock:
            self._corrupt_next = True

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        expected = environ.get("HTTP_X_AMZ_CHECKSUM_SHA256")
        if environ["REQUEST_METHOD"] != "PUT" or not expected:
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        with self._lock:
            if self._corrupt_next and body:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
                self._corrupt_next = False
        if base64.b64encode(hashlib.sha256(body).digest()).decode() != expected:
            with self._lock:
                self.refused_digests += 1
            start_response("400 Bad Request", [("Content-Type", "application/xml")])
            return [BAD_DIGEST.encode()]
        environ["wsgi.input"] = io.BytesIO(body)
        return self.app(environ, start_response)


class S3Server:
    """moto behind :class:`ChecksumVerifyingS3`, served on a loopback port in a thread."""

    def __init__(self, port: int) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app

        self.verifier = ChecksumVerifyingS3(DomainDispatcherApplication(create_backend_app))
        self._server: BaseWSGIServer = make_server("127.0.0.1", port, self.verifier, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.endpoint = f"http://127.0.0.1:{port}"

    def start(self) -> S3Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
