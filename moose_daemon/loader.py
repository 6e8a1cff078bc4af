"""Imports the user's `<source_dir>/main.py` and returns the workflows it defined."""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

from . import definitions
from .definitions import Workflow
from .errors import DefinitionError


def load_workflows(project_dir: Path, source_dir: str) -> dict[str, Workflow]:
    """Import `<project_dir>/<source_dir>/main.py` afresh; raise DefinitionError naming the file and reason."""
    project_dir = project_dir.resolve()
    main_file = project_dir / source_dir / "main.py"
    if not main_file.is_file():
        raise DefinitionError(f"{main_file} not found: workflows are loaded from <source_dir>/main.py")
    package = ".".join(Path(source_dir).parts)
    root = str(project_dir)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)  # first, so this project's `app` wins over any other on the path
    _forget_modules(package)
    _drop_bytecode(project_dir / source_dir)
    importlib.invalidate_caches()
    definitions.take_registered()
    try:
        importlib.import_module(f"{package}.main")
    except DefinitionError as e:
        definitions.take_registered()
        raise DefinitionError(f"{_where(e, project_dir) or main_file}: {e}") from None
    except BaseException as e:  # user code may raise anything, SystemExit included
        definitions.take_registered()
        if isinstance(e, KeyboardInterrupt):
            raise
        where = _where(e, project_dir) or str(main_file)
        raise DefinitionError(f"cannot import {main_file}: {type(e).__name__}: {e} ({where})") from None
    return definitions.take_registered()


def _forget_modules(package: str) -> None:
    """Drop the user's modules so the next import reads the files again (dev reload)."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def _drop_bytecode(folder: Path) -> None:
    """Python trusts a cached .pyc whose source has the same size and mtime second: an edit made within
    the same second as the last load would be ignored on a dev reload. The cache is ours to clear."""
    for cached in folder.rglob("__pycache__/*.pyc"):
        cached.unlink(missing_ok=True)


def _where(error: BaseException, project_dir: Path) -> str | None:
    """The innermost `file:line` of the traceback that lies inside the project."""
    found = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename.startswith(str(project_dir)):
            found = f"{frame.filename}:{frame.lineno}"
    if found is None and isinstance(error, SyntaxError) and error.filename:
        found = f"{error.filename}:{error.lineno}"
    return found
