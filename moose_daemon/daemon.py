"""The composition root of `moose dev` / `moose prod`: config, store, engine, web, signals, shutdown."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

import orjson
from aiohttp import web

from .auth import Authenticator
from .config import LOOPBACK_HOSTS, Config, load_config
from .definitions import Workflow
from .engine import Engine
from .errors import ConfigError, StoreError
from .loader import load_workflows
from .reloader import Reloader
from .store import Store
from .tokens import AdminKey, InvalidKey
from .web import build_app

log = logging.getLogger("moose_daemon")

DB_FILE = "moose.db"
TOKEN_FILE = "admin-token"  # the CLI's credential, readable only by the daemon's user
DAEMON_FILE = "daemon.json"  # where the CLI finds a running daemon's URL
SHUTDOWN_GRACE_S = 10.0


def main(mode: str, project_dir: Path, *, port: int | None = None, log_level: str = "info") -> int:
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(project_dir, port=port, require_file=True)
        admin_key = AdminKey.parse(config.admin_api_key) if config.admin_api_key else None
        if admin_key is None and config.host not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"refusing to listen on {config.host} without authentication.admin_api_key: "
                "anyone on the network could run workflows (create one with `moose generate hash-token`)"
            )
        workflows = load_workflows(config.project_dir, config.source_dir)
    except (ConfigError, InvalidKey) as e:
        print(f"moose: {e}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(serve(config, admin_key, workflows, dev=(mode == "dev")))
    except KeyboardInterrupt:
        return 130


async def serve(
    config: Config, admin_key: AdminKey | None, workflows: dict[str, Workflow], *, dev: bool
) -> int:
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        store = await Store.open(config.state_dir / DB_FILE)
        local_token = _local_token(config.state_dir)
    except (StoreError, OSError) as e:
        print(f"moose: {e}", file=sys.stderr)
        return 1
    engine = Engine(store, workflows)
    auth = Authenticator(admin_key, local_token)
    runner: web.AppRunner | None = None
    try:
        app = build_app(
            engine, auth, dashboard_base=config.url if dev else "", max_body=config.max_request_body_size
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, config.bind_host, config.port, backlog=1024)
        try:
            await site.start()
        except OSError as e:
            reason = (
                "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be opened ({e.strerror})"
            )
            print(f"moose: port {config.port} on {config.bind_host} {reason}", file=sys.stderr)
            return 1
        await engine.start()  # after the port is ours, before the ready line: recovered runs resume first
        url = _actual_url(config, runner)
        _write_daemon_file(config.state_dir, url)
        print(
            f"moose_daemon ready at {url} ({'dev' if dev else 'prod'}, {len(workflows)} workflows: "
            f"{', '.join(sorted(workflows)) or 'none'})",
            flush=True,
        )
        reloader = None
        if dev:
            folder = config.project_dir / config.source_dir
            watcher = Reloader(engine, lambda: load_workflows(config.project_dir, config.source_dir), folder)
            reloader = asyncio.create_task(watcher.run(), name="dev-reloader")
        await _until_signalled()
        log.info("daemon.stopping")
        if reloader is not None:
            reloader.cancel()
            await asyncio.gather(reloader, return_exceptions=True)
        await site.stop()
        return 0
    finally:
        await engine.stop(SHUTDOWN_GRACE_S)
        if runner is not None:
            await runner.cleanup()
        auth.close()
        await store.close()
        (config.state_dir / DAEMON_FILE).unlink(missing_ok=True)
        log.info("daemon.stopped")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _actual_url(config: Config, runner: web.AppRunner) -> str:
    """With `--port 0` the OS picks the port; report the one we got."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            host = "localhost" if config.host == "localhost" else config.host
            host = f"[{host}]" if ":" in host else host
            return f"http://{host}:{address[1]}"
    return config.url


def _local_token(state_dir: Path) -> str:
    path = state_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        token = path.read_text().strip()
        if token:
            return token
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    token = secrets.token_hex(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _write_daemon_file(state_dir: Path, url: str) -> None:
    tmp = state_dir / (DAEMON_FILE + ".tmp")
    tmp.write_bytes(orjson.dumps({"url": url, "pid": os.getpid()}))
    os.replace(tmp, state_dir / DAEMON_FILE)
