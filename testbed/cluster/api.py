"""A small client of the Kubernetes REST API: what the e2e tests read and do, without kubectl."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class Api:
    """GET, POST, PATCH, DELETE and watch against one API server, as the admin user."""

    def __init__(self, server: str, token: str) -> None:
        self.server = server.rstrip("/")
        self.token = token
        # The bed's API server serves a self-signed certificate on 127.0.0.1.
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None, content_type: str = "application/json") -> Any:
        text = self.text(method, path, body, content_type)
        return json.loads(text) if text else None

    def text(self, method: str, path: str, body: Mapping[str, Any] | None = None, content_type: str = "application/json") -> str:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.server}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._tls, timeout=30) as response:
                text: str = response.read().decode()
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, error.read().decode()) from None
        return text

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def items(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(path)["items"]
        return items

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    def create(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def watch(self, path: str, timeout: float) -> Iterator[dict[str, Any]]:
        """Watch events of a collection (``?watch=1``) until the server closes it or `timeout` passes."""
        separator = "&" if "?" in path else "?"
        req = urllib.request.Request(f"{self.server}{path}{separator}watch=1&timeoutSeconds={int(timeout)}")
        req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, context=self._tls, timeout=timeout + 10) as response:
            for line in response:
                if line.strip():
                    yield json.loads(line)
