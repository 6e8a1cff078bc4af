"""How the CLI reaches a running daemon: its URL, its credential, and one HTTP call. Standard library only."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .config import CONFIG_FILE, STATE_DIR, load_config

TOKEN_FILE = "admin-token"
DAEMON_FILE = "daemon.json"


class ClientError(Exception):
    """Anything that stops a CLI call; the message is for the user."""


class Reply(NamedTuple):
    status: int
    data: Any  # decoded JSON, or the text when the body is not JSON
    next_cursor: str | None = None  # X-Next-Cursor of a history page

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        if isinstance(self.data, dict) and "details" in self.data:
            return str(self.data["details"]).rstrip("\n")
        return str(self.data).rstrip("\n")


def find_project(start: Path) -> Path:
    """The nearest folder at or above `start` holding moose.config.toml; `start` when there is none."""
    for folder in (start, *start.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    return start


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def daemon_url(project: Path) -> str:
    """MOOSE_URL, else the URL a running daemon of this project wrote, else the config's host and port."""
    explicit = os.environ.get("MOOSE_URL")
    if explicit:
        return explicit.rstrip("/")
    try:
        info = json.loads((project / STATE_DIR / DAEMON_FILE).read_text())
        if _pid_alive(int(info["pid"])):
            return str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return load_config(project).url


def admin_token(project: Path) -> str | None:
    token = os.environ.get("MOOSE_ADMIN_TOKEN")
    if token:
        return token
    try:
        return (project / STATE_DIR / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


class DaemonClient:
    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ClientError(f"daemon URL must look like http://host:port, got '{url}'")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or 80
        self._token = token
        self._timeout = timeout

    def call(
        self, method: str, path: str, body: bytes | None = None, extra_headers: dict[str, str] | None = None
    ) -> Reply:
        headers = {"Accept": "application/json", **(extra_headers or {})}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except ConnectionRefusedError:
            raise ClientError(
                f"cannot reach the moose daemon at {self.url} (connection refused). Start it with `moose dev`."
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise ClientError(f"cannot talk to the moose daemon at {self.url}: {e}") from None
        finally:
            conn.close()
        text = raw.decode("utf-8", "replace")
        try:
            data: Any = json.loads(text) if text else None
        except ValueError:
            data = text
        return Reply(response.status, data, response.getheader("X-Next-Cursor"))
