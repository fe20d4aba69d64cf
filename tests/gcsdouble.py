"""The suite's Cloud Storage: gcp-storage-emulator's JSON API on loopback, refusing what Cloud Storage
refuses and the emulator does not.

The emulator (PyPI ``gcp-storage-emulator``) stores objects, lists, downloads and checks a CRC32C or
MD5 sent with an upload, but it answers anonymous callers and ignores ``ifGenerationMatch``. Cloud
Storage does neither, and kubetune rests on both (credentials by reference; create-only versions and
conditional pointer updates), so this handler, in front of the emulator's own router, plays:

- OAuth 2.0 for service accounts (RFC 7523): ``POST /token`` takes the JWT a service-account key
  signs, checks its signature against that key's public half and its audience (Google's token
  endpoint), and issues a bearer
  token; every storage request without a token it issued is answered 401, as Cloud Storage answers an
  anonymous caller on a private bucket.
- Generation preconditions: an upload carrying ``ifGenerationMatch`` (0: no live object) is refused
  412 ``conditionNotMet`` unless the object's live generation is that number, checked when the
  object would be stored (the emulator's server handles one request at a time, so check and write
  are one step).

``corrupt_next_upload()`` flips the middle byte of the next upload request carrying data before the
emulator sees it (inside the data of an upload much larger than its metadata): data damaged on the way, which
must not be stored as sent.
"""

from __future__ import annotations

import io
import json
import secrets
import threading
from email.parser import BytesParser
from http import HTTPStatus
from http.server import HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from gcp_storage_emulator.handlers import buckets
from gcp_storage_emulator.server import RequestHandler, Router
from gcp_storage_emulator.storage import Storage

TOKEN_PATH = "/token"
# The audience a service account's grant names: Google's token endpoint, wherever the key's token_uri sends it.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
UPLOAD_PREFIX = "/upload/storage/v1/b/"


def service_account_key(
    token_uri: str, email: str = "trainer@kubetune-test.iam.gserviceaccount.com"
) -> tuple[dict[str, str], bytes]:
    """A service-account key file's JSON (a fresh RSA key; tokens from ``token_uri``) and its public key PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = {
        "type": "service_account",
        "project_id": "kubetune-test",
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": "1" * 21,
        "token_uri": token_uri,
    }
    return key, public


class _Handler(RequestHandler):  # type: ignore[misc]  # the emulator ships no type information
    server: GcsHTTPServer
    rfile: io.BufferedIOBase

    def _answer(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: HTTPStatus, reason: str, message: str) -> None:
        self._answer(
            status,
            {"error": {"code": status.value, "message": message, "errors": [{"reason": reason, "message": message}]}},
        )

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == TOKEN_PATH and method == "POST":
            self._issue_token(body)
            return
        bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if bearer not in self.server.tokens:
            self.server.refused_calls += 1
            self._error(HTTPStatus.UNAUTHORIZED, "required", "Anonymous caller does not have storage access.")
            return
        query = parse_qs(url.query)
        if url.path.startswith(UPLOAD_PREFIX) and "ifGenerationMatch" in query:
            problem = self._precondition(url.path, query, body)
            if problem is not None:
                self._error(HTTPStatus.PRECONDITION_FAILED, "conditionNotMet", problem)
                return
        initiation = query.get("uploadType") == ["resumable"] and "upload_id" not in query  # metadata only
        if url.path.startswith(UPLOAD_PREFIX) and body and not initiation and self.server.take_corruption():
            middle = len(body) // 2  # inside the data of any upload much larger than its metadata
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
        self.rfile = io.BytesIO(body)
        Router(self).handle(method)

    def _issue_token(self, body: bytes) -> None:
        from google.auth import exceptions, jwt

        form = parse_qs(body.decode())
        assertion = (form.get("assertion") or [""])[0]
        try:
            jwt.decode(assertion, certs=self.server.public_keys, audience=GOOGLE_TOKEN_AUDIENCE)
        except (exceptions.GoogleAuthError, ValueError) as err:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": "invalid_grant", "error_description": str(err)})
            return
        token = secrets.token_urlsafe(24)
        self.server.tokens.add(token)
        self._answer(HTTPStatus.OK, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _precondition(self, path: str, query: dict[str, list[str]], body: bytes) -> str | None:
        """Why the upload's ``ifGenerationMatch`` does not hold, or None."""
        bucket = path[len(UPLOAD_PREFIX) :].split("/", 1)[0]
        name: str | None = query["name"][0] if query.get("name") else None
        if name is None and "upload_id" in query:
            name = self.server.storage.get_resumable_file_obj(query["upload_id"][0])["name"]
        if name is None and query.get("uploadType") == ["multipart"]:  # named in its first part, JSON
            message: Any = BytesParser().parsebytes(
                f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode() + body
            )
            name = json.loads(message.get_payload()[0].get_payload(decode=True))["name"]
        elif name is None:  # a resumable upload begins with the object's JSON metadata
            name = json.loads(body)["name"]
        wanted = int(query["ifGenerationMatch"][0])
        try:
            live = int(self.server.storage.get_file_obj(bucket, name)["generation"])
        except Exception:  # the emulator's NotFound: no live object
            live = 0
        return (
            None
            if live == wanted
            else f"At least one of the pre-conditions you specified did not hold (generation {live})."
        )

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PATCH(self) -> None:
        self._route("PATCH")


class GcsHTTPServer(HTTPServer):
    def __init__(self, port: int, storage: Storage) -> None:
        super().__init__(("127.0.0.1", port), lambda *args: _Handler(storage, *args))
        self.storage = storage
        self.token_uri = f"http://127.0.0.1:{port}{TOKEN_PATH}"
        self.public_keys: dict[str, bytes] = {}  # private_key_id -> PEM
        self.tokens: set[str] = set()
        self.refused_calls = 0
        self._corrupt_next = False
        self._lock = threading.Lock()

    def take_corruption(self) -> bool:
        with self._lock:
            corrupt, self._corrupt_next = self._corrupt_next, False
        return corrupt


class GcsServer:
    """The emulator behind :class:`_Handler` on loopback, in a thread."""

    def __init__(self, port: int) -> None:
        self.httpd = GcsHTTPServer(port, Storage(use_memory_fs=True))
        self.endpoint = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> GcsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def create_bucket(self, name: str) -> None:
        buckets.create_bucket(name, self.httpd.storage)

    def write_key(self, path: Path) -> Path:
        """A new service-account key this server trusts, written as JSON to ``path``."""
        key, public = service_account_key(self.httpd.token_uri)
        self.httpd.public_keys[key["private_key_id"]] = public
        path.write_text(json.dumps(key))
        return path

    def corrupt_next_upload(self) -> None:
        with self.httpd._lock:
            self.httpd._corrupt_next = True

    @property
    def refused_calls(self) -> int:
        return self.httpd.refused_calls
