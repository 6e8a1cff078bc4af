"""moose.config.toml, read once. Precedence: command-line flag > MOOSE_* environment > file > default.

Standard library only: the CLI imports this to find the daemon.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from .errors import ConfigError

CONFIG_FILE = "moose.config.toml"
STATE_DIR = ".moose"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

# (section, key) -> (type, default). Section "" is the top level. Unknown keys are ignored so that
# a MooseStack project's config (clickhouse_config, redis_config, ...) loads as it is.
_KEYS: dict[tuple[str, str], tuple[type, Any]] = {
    ("http_server_config", "host"): (str, "localhost"),
    ("http_server_config", "port"): (int, 4000),
    ("http_server_config", "max_request_body_size"): (int, 10 * 1024 * 1024),
    ("authentication", "admin_api_key"): (str, ""),
    ("", "source_dir"): (str, "app"),
}


class Config(NamedTuple):  # not a dataclass: `dataclasses` costs the CLI ~30 ms of imports
    project_dir: Path
    host: str
    port: int
    max_request_body_size: int
    admin_api_key: str  # "" when not configured
    source_dir: str

    @property
    def state_dir(self) -> Path:
        return self.project_dir / STATE_DIR

    @property
    def bind_host(self) -> str:
        """`localhost` binds IPv4 loopback only, never whatever else the name resolves to."""
        return "127.0.0.1" if self.host == "localhost" else self.host

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def _env_name(section: str, key: str) -> str:
    return f"MOOSE_{section.upper()}__{key.upper()}" if section else f"MOOSE_{key.upper()}"


def _coerce(raw: Any, kind: type, name: str, origin: str) -> Any:
    if kind is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{name} in {origin}: expected a whole number, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"-?[0-9]+", raw.strip()):
            return int(raw.strip())
        raise ConfigError(f"{name} in {origin}: expected a whole number, got {raw!r}")
    if not isinstance(raw, str):
        raise ConfigError(f"{name} in {origin}: expected a string, got {raw!r}")
    return raw


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML in {path}: {e}") from None


def load_config(
    project_dir: Path,
    *,
    environ: Mapping[str, str] | None = None,
    port: int | None = None,
    require_file: bool = False,
) -> Config:
    """Read the project's config; raise ConfigError naming the key or file at fault."""
    env = os.environ if environ is None else environ
    project_dir = project_dir.resolve()
    path = project_dir / CONFIG_FILE
    if require_file and not path.exists():
        raise ConfigError(
            f"no {CONFIG_FILE} in {project_dir} (use --project DIR or run from a project folder)"
        )
    data = _read_file(path)
    values: dict[str, Any] = {}
    for (section, key), (kind, default) in _KEYS.items():
        name = f"{section}.{key}" if section else key
        table: Any = data.get(section, {}) if section else data
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] in {path}: expected a table, got {table!r}")
        value = default
        if key in table:
            value = _coerce(table[key], kind, name, str(path))
        env_name = _env_name(section, key)
        if env_name in env:
            value = _coerce(env[env_name], kind, name, f"environment variable {env_name}")
        values[key] = value
    if port is not None:
        values["port"] = port
    config = Config(project_dir=project_dir, **values)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"http_server_config.port must be between 0 and 65535, got {config.port}")
    if not config.host:
        raise ConfigError("http_server_config.host must not be empty")
    if config.max_request_body_size < 1:
        raise ConfigError("http_server_config.max_request_body_size must be at least 1")
    source = Path(config.source_dir)
    if source.is_absolute() or ".." in source.parts or not config.source_dir.strip():
        raise ConfigError(f"source_dir must be a folder inside the project, got {config.source_dir!r}")
