"""The composition root of `moose dev` / `moose prod`: config, store, engine, web, signals, shutdown."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import secrets
import signal
import socket
import sys
import threading
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
from .watchdog import LoopWatchdog
from .web import build_app

log = logging.getLogger("moose_daemon")

DB_FILE = "moose.db"
TOKEN_FILE = "admin-token"  # the CLI's credential, readable only by the daemon's user
DAEMON_FILE = "daemon.json"  # where the CLI finds a running daemon's URL
SHUTDOWN_GRACE_S = 10.0


def main(mode: str, project_dir: Path, *, port: int | None = None, log_level: str = "info") -> int:
    # The logging HOWTO's optimisations: no record needs its caller's file and line, thread or process
    # (the format shows none of them), and at the default level every run logs two lines.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
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
        code = asyncio.run(serve(config, admin_key, workflows, dev=(mode == "dev")))
    except KeyboardInterrupt:
        code = 130
    task_threads = [t for t in threading.enumerate() if t.name.startswith("moose-task")]
    for thread in task_threads:  # idle ones end at once: the pool was shut down
        thread.join(timeout=0.2)
    stuck = [t for t in task_threads if t.is_alive()]
    if stuck:
        # A plain `def` task that never returns cannot be stopped, and Python's exit would wait for it
        # forever. Its run is recorded as interrupted and resumes at the next start.
        log.warning("daemon.exit_with_stuck_tasks threads=%d", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


async def serve(
    config: Config, admin_key: AdminKey | None, workflows: dict[str, Workflow], *, dev: bool
) -> int:
    try:
        sock = _bind(config)
    except OSError as e:
        reason = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be opened ({e.strerror})"
        print(f"moose: port {config.port} on {config.bind_host} {reason}", file=sys.stderr)
        return 1
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        store = await Store.open(config.state_dir / DB_FILE)
        local_token = _local_token(config.state_dir)
    except (StoreError, OSError) as e:
        sock.close()
        print(f"moose: {e}", file=sys.stderr)
        return 1
    stop = _stop_on_signals()
    url = _url_of(config, sock)
    engine = Engine(store, workflows)
    auth = Authenticator(admin_key, local_token)
    app = build_app(engine, auth, dashboard_base=url if dev else "", max_body=config.max_request_body_size)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    watchdog = LoopWatchdog(engine.registry)
    reloader: asyncio.Task[None] | None = None
    try:
        try:
            await engine.start()  # recovered runs are live again before the first request
        except StoreError as e:
            print(f"moose: cannot resume from {store.path}: {e}", file=sys.stderr)
            return 1
        # Tens of thousands of live runs are long-lived objects: keep the collector off them, and collect
        # the young generation less often than every 700 allocations (it dominated terminate-all).
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        watchdog.start()
        await runner.setup()
        site = web.SockSite(runner, sock, backlog=1024)
        await site.start()
        _write_daemon_file(config.state_dir, url)
        if dev:
            folder = config.project_dir / config.source_dir
            watcher = Reloader(engine, lambda: load_workflows(config.project_dir, config.source_dir), folder)
            reloader = asyncio.create_task(watcher.run(), name="dev-reloader")
        count = f"{len(workflows)} workflow{'' if len(workflows) == 1 else 's'}"
        names = ", ".join(sorted(workflows)) or "none"
        print(f"moose_daemon ready at {url} ({'dev' if dev else 'prod'}, {count}: {names})", flush=True)
        await stop.wait()
        log.info("daemon.stopping")
        await site.stop()
        return 0
    finally:
        if reloader is not None:
            reloader.cancel()
            await asyncio.gather(reloader, return_exceptions=True)
        await engine.stop(SHUTDOWN_GRACE_S)
        await watchdog.stop()
        await runner.cleanup()
        auth.close()
        await store.close()
        sock.close()
        (config.state_dir / DAEMON_FILE).unlink(missing_ok=True)
        log.info("daemon.stopped")


def _bind(config: Config) -> socket.socket:
    """Take the port before anything else starts, so a port in use is refused at once."""
    family, kind, proto, _, address = socket.getaddrinfo(
        config.bind_host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _url_of(config: Config, sock: socket.socket) -> str:
    """With `--port 0` the OS picks the port; report the one we got."""
    port = sock.getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{port}"


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
