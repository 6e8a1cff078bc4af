"""moose.config.toml: defaults, file values, MOOSE_* environment overrides, the --port flag, and errors
that name their key. Every call passes `environ=` so the test machine's environment cannot leak in."""

from __future__ import annotations

from pathlib import Path

import pytest

from moose_daemon.config import CONFIG_FILE, load_config
from moose_daemon.errors import ConfigError


def write(project: Path, text: str) -> Path:
    path = project / CONFIG_FILE
    path.write_text(text)
    return path


def config_error(project: Path, **kw: object) -> str:
    kw.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_config(project, **kw)  # type: ignore[arg-type]
    return str(info.value)


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    assert config.host == "localhost"
    assert config.port == 4000
    assert config.max_request_body_size == 10 * 1024 * 1024
    assert config.admin_api_key == ""
    assert config.source_dir == "app"
    assert config.project_dir == tmp_path.resolve()
    assert config.state_dir == tmp_path.resolve() / ".moose"
    assert config.url == "http://localhost:4000"
    assert config.bind_host == "127.0.0.1"


def test_defaults_with_empty_sections(tmp_path: Path) -> None:
    write(tmp_path, "[http_server_config]\n[authentication]\n")
    config = load_config(tmp_path, environ={})
    assert (config.host, config.port, config.admin_api_key, config.source_dir) == (
        "localhost",
        4000,
        "",
        "app",
    )


def test_file_values(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
source_dir = "src"

[http_server_config]
host = "0.0.0.0"
port = 4100
max_request_body_size = 2048

[authentication]
admin_api_key = "f4d2103456c63793d3e7571f52d3e250b387b061"
""",
    )
    config = load_config(tmp_path, environ={})
    assert config.host == "0.0.0.0"
    assert config.port == 4100
    assert config.max_request_body_size == 2048
    assert config.admin_api_key == "f4d2103456c63793d3e7571f52d3e250b387b061"
    assert config.source_dir == "src"
    assert config.url == "http://0.0.0.0:4100"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    write(
        tmp_path,
        '[http_server_config]\nport = 4100\n[authentication]\nadmin_api_key = "from-file"\n',
    )
    config = load_config(
        tmp_path,
        environ={
            "MOOSE_HTTP_SERVER_CONFIG__PORT": "5001",
            "MOOSE_AUTHENTICATION__ADMIN_API_KEY": "from-env",
            "MOOSE_SOURCE_DIR": "flows",
            "MOOSE_HTTP_SERVER_CONFIG__HOST": "127.0.0.1",
        },
    )
    assert config.port == 5001
    assert config.admin_api_key == "from-env"
    assert config.source_dir == "flows"
    assert config.host == "127.0.0.1"


def test_environment_applies_without_a_file(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={"MOOSE_HTTP_SERVER_CONFIG__PORT": " 4200 "})
    assert config.port == 4200


def test_unrelated_environment_is_ignored(tmp_path: Path) -> None:
    config = load_config(
        tmp_path, environ={"MOOSE_CLICKHOUSE_CONFIG__HOST_PORT": "x", "PORT": "1", "MOOSE_PORT": "abc"}
    )
    assert config.port == 4000


def test_process_environment_is_used_when_environ_is_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOOSE_HTTP_SERVER_CONFIG__PORT", "4321")
    assert load_config(tmp_path).port == 4321


def test_flag_port_wins_over_environment_and_file(tmp_path: Path) -> None:
    write(tmp_path, "[http_server_config]\nport = 4100\n")
    config = load_config(tmp_path, environ={"MOOSE_HTTP_SERVER_CONFIG__PORT": "5001"}, port=6001)
    assert config.port == 6001
    assert load_config(tmp_path, environ={}, port=0).port == 0  # 0: the OS picks (tests)


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ('[http_server_config]\nport = "abc"\n', ["http_server_config.port", "'abc'"]),
        ("[http_server_config]\nport = 70000\n", ["http_server_config.port", "70000"]),
        ("[http_server_config]\nport = -1\n", ["http_server_config.port", "-1"]),
        ("[http_server_config]\nport = 4000.5\n", ["http_server_config.port", "4000.5"]),
        ("[http_server_config]\nport = true\n", ["http_server_config.port", "True"]),
        ("[http_server_config]\nhost = 5\n", ["http_server_config.host", "5"]),
        ('[http_server_config]\nhost = ""\n', ["http_server_config.host"]),
        ("[http_server_config]\nmax_request_body_size = 0\n", ["http_server_config.max_request_body_size"]),
        ("[authentication]\nadmin_api_key = 42\n", ["authentication.admin_api_key"]),
        ('source_dir = "../elsewhere"\n', ["source_dir", "../elsewhere"]),
        ('source_dir = "/abs/app"\n', ["source_dir", "/abs/app"]),
        ("source_dir = 3\n", ["source_dir"]),
        ("http_server_config = 5\n", ["[http_server_config]"]),
        ('authentication = "x"\n', ["[authentication]"]),
    ],
)
def test_bad_file_values_name_the_key(tmp_path: Path, toml: str, fragments: list[str]) -> None:
    write(tmp_path, toml)
    message = config_error(tmp_path)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message.strip()  # a one-line reason


@pytest.mark.parametrize(
    ("value", "fragment"), [("abc", "'abc'"), ("70000", "70000"), ("", "''"), ("4.5", "'4.5'")]
)
def test_bad_environment_port_names_the_variable(tmp_path: Path, value: str, fragment: str) -> None:
    message = config_error(tmp_path, environ={"MOOSE_HTTP_SERVER_CONFIG__PORT": value})
    assert "http_server_config.port" in message
    assert fragment in message
    if value != "70000":
        assert "MOOSE_HTTP_SERVER_CONFIG__PORT" in message


@pytest.mark.parametrize("value", ["--5", "\u00b2"])
def test_odd_numeric_strings_are_config_errors(tmp_path: Path, value: str) -> None:
    message = config_error(tmp_path, environ={"MOOSE_HTTP_SERVER_CONFIG__PORT": value})
    assert "MOOSE_HTTP_SERVER_CONFIG__PORT" in message


def test_bad_environment_source_dir(tmp_path: Path) -> None:
    message = config_error(tmp_path, environ={"MOOSE_SOURCE_DIR": "../x"})
    assert "source_dir" in message


def test_flag_port_out_of_range(tmp_path: Path) -> None:
    assert "port" in config_error(tmp_path, port=70000)


def test_invalid_toml_names_the_file_and_place(tmp_path: Path) -> None:
    path = write(tmp_path, "[http_server_config\nport = 4000\n")
    message = config_error(tmp_path)
    assert "invalid TOML" in message
    assert str(path) in message
    assert "line 1" in message


def test_unreadable_config_is_an_error(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).mkdir()  # exists but cannot be read as a file
    message = config_error(tmp_path)
    assert CONFIG_FILE in message


def test_moosestack_sections_are_ignored(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
language = "Python"

[redpanda_config]
broker = "localhost:19092"

[clickhouse_config]
db_name = "local"
host = "localhost"
host_port = 18123

[http_server_config]
host = "localhost"
port = 4100
management_port = 5001
proxy_port = 4001

[redis_config]
url = "redis://127.0.0.1:6379"
key_prefix = "MS"

[temporal_config]
temporal_host = "localhost"
temporal_port = 7233
namespace = "default"

[authentication]
admin_api_key = ""

[features]
streaming_engine = true
workflows = true
""",
    )
    config = load_config(tmp_path, environ={"MOOSE_CLICKHOUSE_CONFIG__HOST_PORT": "not-a-number"})
    assert config.port == 4100
    assert config.host == "localhost"


def test_require_file(tmp_path: Path) -> None:
    message = config_error(tmp_path, require_file=True)
    assert CONFIG_FILE in message
    assert str(tmp_path.resolve()) in message
    write(tmp_path, "")
    assert load_config(tmp_path, environ={}, require_file=True).port == 4000


def test_ipv6_host_url(tmp_path: Path) -> None:
    write(tmp_path, '[http_server_config]\nhost = "::1"\nport = 4100\n')
    config = load_config(tmp_path, environ={})
    assert config.url == "http://[::1]:4100"
    assert config.bind_host == "::1"
