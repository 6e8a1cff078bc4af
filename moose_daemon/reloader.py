"""Dev mode: reload the workflow definitions when a file under source_dir changes, without a restart."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .definitions import Workflow
from .engine import Engine
from .errors import DefinitionError

log = logging.getLogger("moose_daemon.reloader")

Snapshot = dict[str, tuple[int, int]]


def snapshot(folder: Path) -> Snapshot:
    """(mtime, size) of every .py file below `folder`."""
    found: Snapshot = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                found[path] = (st.st_mtime_ns, st.st_size)
    return found


class Reloader:
    def __init__(
        self, engine: Engine, load: Callable[[], dict[str, Workflow]], folder: Path, interval_s: float = 0.5
    ) -> None:
        self._engine = engine
        self._load = load
        self._folder = folder
        self._interval_s = interval_s

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        seen = await loop.run_in_executor(None, snapshot, self._folder)
        while True:
            await asyncio.sleep(self._interval_s)
            now = await loop.run_in_executor(None, snapshot, self._folder)
            if now != seen:
                seen = now
                await self.reload()

    async def reload(self) -> bool:
        """Load the definitions again; on failure keep the previous ones and report the error."""
        try:
            workflows = self._load()
        except DefinitionError as e:
            self._engine.reload_error = str(e)
            log.error("reload.failed kept the previous definitions: %s", e)
            return False
        await self._engine.replace_workflows(workflows)
        log.info("reload.done workflows=%s", ",".join(sorted(workflows)))
        return True
