"""The loader imports `<source_dir>/main.py` and returns its workflows, or a DefinitionError naming the
file and the reason. Each test builds its own project in tmp_path."""

from __future__ import annotations

import os
import re
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moose_daemon import definitions
from moose_daemon.config import load_config
from moose_daemon.errors import DefinitionError
from moose_daemon.loader import load_workflows

HEADER = """\
from typing import Any
from moose_daemon import Task, TaskConfig, TaskContext, Workflow, WorkflowConfig

def run(ctx: TaskContext[Any]) -> None:
    return None

"""


@pytest.fixture(autouse=True)
def _restore_import_state() -> Iterator[None]:
    """The loader puts the project on sys.path and imports `app`; leave nothing behind."""
    path = list(sys.path)
    before = {name for name in sys.modules if name.split(".")[0] in {"app", "src", "flows", "other"}}
    yield
    sys.path[:] = path
    for name in [m for m in sys.modules if m.split(".")[0] in {"app", "src", "flows", "other"}]:
        if name not in before:
            del sys.modules[name]
    definitions.take_registered()


def make_project(
    root: Path, main_py: str, *, source_dir: str = "app", extra: dict[str, str] | None = None
) -> Path:
    folder = root / source_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text("")
    (folder / "main.py").write_text(textwrap.dedent(main_py))
    for name, text in (extra or {}).items():
        (folder / name).write_text(textwrap.dedent(text))
    return root


def load_error(project: Path, source_dir: str = "app") -> str:
    with pytest.raises(DefinitionError) as info:
        load_workflows(project, source_dir)
    return str(info.value)


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


# ---- success ------------------------------------------------------------------------------------


def test_loads_workflows_with_their_settings(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        HEADER
        + """
second = Task[Any, None](name="second", config=TaskConfig(run=run, retries=0, timeout="500ms"))
first = Task[Any, None](name="first", config=TaskConfig(run=run, on_complete=[second]))
Workflow(name="pipeline", config=WorkflowConfig(starting_task=first, retries=1, timeout="never",
                                                schedule="@every 30s"))
Workflow(name="plain", config=WorkflowConfig(starting_task=Task[Any, None](name="only", config=TaskConfig(run=run))))
""",
    )
    found = load_workflows(project, "app")
    assert sorted(found) == ["pipeline", "plain"]
    pipeline = found["pipeline"]
    assert pipeline.get_task_names() == ["first", "second"]
    assert pipeline.retries == 1
    assert pipeline.timeout_s is None
    assert pipeline.schedule is not None and pipeline.schedule.every_s == 30.0
    second = pipeline.get_task("second")
    assert second is not None and second.retries == 0 and second.timeout_s == 0.5
    plain = found["plain"]
    assert plain.retries == 3 and plain.timeout_s == 3600.0 and plain.schedule is None
    assert plain.starting_task.retries == 3 and plain.starting_task.timeout_s == 3600.0
    main = project / "app" / "main.py"
    plain_line = line_of(main, 'name="plain"')
    assert plain.defined_at == f"{main.resolve()}:{plain_line}"


def test_workflows_reached_through_imports_are_found(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        "from app import flows  # noqa: F401\n",
        extra={
            "flows.py": HEADER
            + 'Workflow(name="nested", config=WorkflowConfig(starting_task=Task[Any, None](name="t", config=TaskConfig(run=run))))\n'
        },
    )
    assert list(load_workflows(project, "app")) == ["nested"]


def test_reloading_gives_fresh_definitions(tmp_path: Path) -> None:
    body = (
        HEADER
        + 'Workflow(name="w", config=WorkflowConfig(starting_task=Task[Any, None](name="t", config=TaskConfig(run=run))))\n'
    )
    project = make_project(tmp_path, body)
    first = load_workflows(project, "app")
    second = load_workflows(project, "app")  # no "two workflows named 'w'" from the first import
    assert list(first) == list(second) == ["w"]
    assert first["w"] is not second["w"]
    assert first["w"].starting_task is not second["w"].starting_task
    assert definitions.get_workflows() == {}  # the loader takes what was registered

    (project / "app" / "main.py").write_text(body.replace('name="w"', 'name="renamed"') + "# edited\n")
    assert list(load_workflows(project, "app")) == ["renamed"]


def test_reload_sees_an_edit_that_keeps_size_and_mtime_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as for a user without PYTHONDONTWRITEBYTECODE
    body = (
        HEADER
        + 'Workflow(name="aaa", config=WorkflowConfig(starting_task=Task[Any, None](name="t", config=TaskConfig(run=run))))\n'
    )
    project = make_project(tmp_path, body)
    main = project / "app" / "main.py"
    stamp = int(time.time())
    os.utime(main, (stamp, stamp))
    assert list(load_workflows(project, "app")) == ["aaa"]
    main.write_text(body.replace('"aaa"', '"bbb"'))  # an editor save in the same second, same length
    os.utime(main, (stamp, stamp))
    assert list(load_workflows(project, "app")) == ["bbb"]


def test_failed_load_leaves_nothing_registered(tmp_path: Path) -> None:
    good = (
        HEADER
        + 'Workflow(name="w", config=WorkflowConfig(starting_task=Task[Any, None](name="t", config=TaskConfig(run=run))))\n'
    )
    project = make_project(tmp_path, good + 'raise RuntimeError("broken after registering")\n')
    assert "broken after registering" in load_error(project)
    (project / "app" / "main.py").write_text(good)
    assert list(load_workflows(project, "app")) == ["w"]


# ---- errors that stop the daemon at start ----------------------------------------------------------------


def test_two_workflows_with_one_name_name_both_places(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        HEADER
        + """
t = Task[Any, None](name="t", config=TaskConfig(run=run))
Workflow(name="dup", config=WorkflowConfig(starting_task=t))  # first
Workflow(name="dup", config=WorkflowConfig(starting_task=t))  # second
""",
    )
    main = (project / "app" / "main.py").resolve()
    message = load_error(project)
    assert "'dup'" in message
    assert f"{main}:{line_of(main, '# first')}" in message
    assert f"{main}:{line_of(main, '# second')}" in message


def test_duplicate_names_across_files_name_both_files(tmp_path: Path) -> None:
    wf = 'Workflow(name="dup", config=WorkflowConfig(starting_task=Task[Any, None](name="t", config=TaskConfig(run=run))))\n'
    project = make_project(
        tmp_path, HEADER + "from app import other  # noqa: F401\n" + wf, extra={"other.py": HEADER + wf}
    )
    message = load_error(project)
    app = (project / "app").resolve()
    assert re.search(rf"{re.escape(str(app / 'other.py'))}:\d+", message), message
    assert re.search(rf"{re.escape(str(app / 'main.py'))}:\d+", message), message


def test_main_that_raises_names_file_and_exception(tmp_path: Path) -> None:
    project = make_project(tmp_path, 'import os\nraise RuntimeError("database URL missing")\n')
    message = load_error(project)
    main = (project / "app" / "main.py").resolve()
    assert str(main) in message
    assert "RuntimeError: database URL missing" in message
    assert f"{main}:2" in message


def test_error_in_an_imported_module_points_at_that_module(tmp_path: Path) -> None:
    project = make_project(
        tmp_path, "from app import helper  # noqa: F401\n", extra={"helper.py": "x = 1\ny = 1 / 0\n"}
    )
    message = load_error(project)
    assert "ZeroDivisionError" in message
    assert f"{(project / 'app' / 'helper.py').resolve()}:2" in message


def test_missing_module_import(tmp_path: Path) -> None:
    project = make_project(tmp_path, "import definitely_not_installed_xyz\n")
    message = load_error(project)
    assert "ModuleNotFoundError" in message and "definitely_not_installed_xyz" in message


def test_system_exit_in_user_code_does_not_exit(tmp_path: Path) -> None:
    project = make_project(tmp_path, "import sys\nsys.exit(3)\n")
    message = load_error(project)
    assert "SystemExit" in message


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    project = make_project(tmp_path, "x = 1\ndef broken(:\n    pass\n")
    message = load_error(project)
    assert "SyntaxError" in message
    assert f"{(project / 'app' / 'main.py').resolve()}:2" in message


def test_missing_main_py(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    message = load_error(tmp_path)
    assert "main.py" in message
    assert "not found" in message
    assert "Missing" not in message


def test_missing_source_dir(tmp_path: Path) -> None:
    message = load_error(tmp_path, "nowhere")
    assert str(tmp_path.resolve() / "nowhere" / "main.py") in message


def _task_timeout_project(tmp_path: Path) -> Path:
    return make_project(
        tmp_path,
        HEADER
        + """
nap = Task[Any, None](name="nap", config=TaskConfig(run=run, timeout="soon"))
Workflow(name="sleepy", config=WorkflowConfig(starting_task=nap))
""",
    )


def test_bad_task_timeout_names_task_field_and_place(tmp_path: Path) -> None:
    project = _task_timeout_project(tmp_path)
    message = load_error(project)
    assert "'nap'" in message
    assert "timeout" in message
    assert "'soon'" in message
    main = (project / "app" / "main.py").resolve()
    line = line_of(main, "Workflow(name=")  # the place of the workflow that uses the task
    assert f"{main}:{line}" in message


def test_bad_task_timeout_names_the_workflow(tmp_path: Path) -> None:
    message = load_error(_task_timeout_project(tmp_path))
    assert "'sleepy'" in message


@pytest.mark.parametrize("timeout", ["1x", "90", "", "-5m", "0s"])
def test_bad_workflow_timeout(tmp_path: Path, timeout: str) -> None:
    project = make_project(
        tmp_path,
        HEADER
        + f"""
t = Task[Any, None](name="t", config=TaskConfig(run=run))
Workflow(name="wf", config=WorkflowConfig(starting_task=t, timeout={timeout!r}))
""",
    )
    if timeout == "":
        # empty means "use the default", as MooseStack does
        assert load_workflows(project, "app")["wf"].timeout_s == 3600.0
        return
    message = load_error(project)
    assert "workflow 'wf'" in message
    assert "timeout" in message
    assert repr(timeout) in message


def test_non_string_timeout(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        HEADER
        + """
t = Task[Any, None](name="t", config=TaskConfig(run=run))
Workflow(name="wf", config=WorkflowConfig(starting_task=t, timeout=30))
""",
    )
    message = load_error(project)
    assert "workflow 'wf'" in message and "timeout" in message and "30" in message


@pytest.mark.parametrize("retries", [-1, "three", 1.5, True])
@pytest.mark.parametrize("level", ["task", "workflow"])
def test_bad_retries(tmp_path: Path, retries: object, level: str) -> None:
    task_retries = repr(retries) if level == "task" else "None"
    wf_retries = repr(retries) if level == "workflow" else "None"
    project = make_project(
        tmp_path,
        HEADER
        + f"""
t = Task[Any, None](name="t", config=TaskConfig(run=run, retries={task_retries}))
Workflow(name="wf", config=WorkflowConfig(starting_task=t, retries={wf_retries}))
""",
    )
    message = load_error(project)
    assert "retries" in message
    assert repr(retries) in message
    assert ("task 't'" if level == "task" else "workflow 'wf'") in message


@pytest.mark.parametrize("schedule", ["every day", "61 * * * *", "@every soon", "@every never", "* * *"])
def test_invalid_schedule(tmp_path: Path, schedule: str) -> None:
    project = make_project(
        tmp_path,
        HEADER
        + f"""
t = Task[Any, None](name="t", config=TaskConfig(run=run))
Workflow(name="ticker", config=WorkflowConfig(starting_task=t, schedule={schedule!r}))
""",
    )
    message = load_error(project)
    assert "workflow 'ticker'" in message
    assert "schedule" in message


@pytest.mark.parametrize(
    ("schedule", "cron"), [("5m", "*/5 * * * *"), ("2h", "0 */2 * * *"), ("0 12 * * *", "0 12 * * *")]
)
def test_valid_schedules(tmp_path: Path, schedule: str, cron: str) -> None:
    project = make_project(
        tmp_path,
        HEADER
        + f"""
t = Task[Any, None](name="t", config=TaskConfig(run=run))
Workflow(name="ticker", config=WorkflowConfig(starting_task=t, schedule={schedule!r}))
""",
    )
    parsed = load_workflows(project, "app")["ticker"].schedule
    assert parsed is not None and parsed.cron == cron and parsed.text == schedule


def test_duplicate_task_names_in_one_workflow(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        HEADER
        + """
child = Task[Any, None](name="step", config=TaskConfig(run=run))
parent = Task[Any, None](name="step", config=TaskConfig(run=run, on_complete=[child]))
Workflow(name="twice", config=WorkflowConfig(starting_task=parent))
""",
    )
    message = load_error(project)
    assert "workflow 'twice'" in message
    assert "'step'" in message


def test_same_task_name_in_two_workflows_is_fine(tmp_path: Path) -> None:
    project = make_project(
        tmp_path,
        HEADER
        + """
Workflow(name="one", config=WorkflowConfig(starting_task=Task[Any, None](name="step", config=TaskConfig(run=run))))
Workflow(name="two", config=WorkflowConfig(starting_task=Task[Any, None](name="step", config=TaskConfig(run=run))))
""",
    )
    assert sorted(load_workflows(project, "app")) == ["one", "two"]


@pytest.mark.parametrize(
    "wiring",
    ["b.on_complete.append(a)", "a.on_complete.append(a)"],
    ids=["two-task-cycle", "self-cycle"],
)
def test_cycle(tmp_path: Path, wiring: str) -> None:
    project = make_project(
        tmp_path,
        HEADER
        + f"""
b = Task[Any, None](name="b", config=TaskConfig(run=run))
a = Task[Any, None](name="a", config=TaskConfig(run=run, on_complete=[b]))
{wiring}
Workflow(name="loop", config=WorkflowConfig(starting_task=a))
""",
    )
    message = load_error(project)
    assert "workflow 'loop'" in message
    assert "cycle" in message
    assert "'a'" in message


@pytest.mark.parametrize(
    ("snippet", "fragment"),
    [
        ('Task[Any, None](name="", config=TaskConfig(run=run))', "task name"),
        ('Task[Any, None](name="t", config=TaskConfig(run="not callable"))', "run must be callable"),
        ('Task[Any, None](name="t", config=TaskConfig(run=run, on_cancel=5))', "on_cancel"),
        ('Task[Any, None](name="t", config=TaskConfig(run=run, on_complete=["x"]))', "on_complete"),
        ("Workflow(name='w', config=WorkflowConfig(starting_task='t'))", "starting_task"),
        (
            "Workflow(name='a/b', config=WorkflowConfig(starting_task=Task[Any, None](name='t', config=TaskConfig(run=run))))",
            "'/'",
        ),
    ],
)
def test_other_definition_errors(tmp_path: Path, snippet: str, fragment: str) -> None:
    project = make_project(tmp_path, HEADER + snippet + "\n")
    message = load_error(project)
    assert fragment in message
    assert str((project / "app" / "main.py").resolve()) in message


# ---- source_dir ------------------------------------------------------------------------------------


WF = (
    HEADER
    + 'Workflow(name="{name}", config=WorkflowConfig(starting_task=Task[Any, None](name="t", config=TaskConfig(run=run))))\n'
)


def test_source_dir_from_config_file(tmp_path: Path) -> None:
    make_project(tmp_path, WF.format(name="from-app"))
    make_project(tmp_path, WF.format(name="from-src"), source_dir="src")
    (tmp_path / "moose.config.toml").write_text('source_dir = "src"\n')
    config = load_config(tmp_path, environ={})
    assert config.source_dir == "src"
    assert list(load_workflows(config.project_dir, config.source_dir)) == ["from-src"]


def test_source_dir_from_environment_wins_over_file(tmp_path: Path) -> None:
    make_project(tmp_path, WF.format(name="from-src"), source_dir="src")
    make_project(tmp_path, WF.format(name="from-flows"), source_dir="flows")
    (tmp_path / "moose.config.toml").write_text('source_dir = "src"\n')
    config = load_config(tmp_path, environ={"MOOSE_SOURCE_DIR": "flows"})
    assert config.source_dir == "flows"
    assert list(load_workflows(config.project_dir, config.source_dir)) == ["from-flows"]


def test_default_source_dir_is_app(tmp_path: Path) -> None:
    make_project(tmp_path, WF.format(name="from-app"))
    config = load_config(tmp_path, environ={})
    assert list(load_workflows(config.project_dir, config.source_dir)) == ["from-app"]


def test_two_projects_in_turn_do_not_mix(tmp_path: Path) -> None:
    one = make_project(tmp_path / "one", WF.format(name="first-project"))
    two = make_project(tmp_path / "two", WF.format(name="second-project"))
    assert list(load_workflows(one, "app")) == ["first-project"]
    assert list(load_workflows(two, "app")) == ["second-project"]
    assert list(load_workflows(one, "app")) == ["first-project"]
