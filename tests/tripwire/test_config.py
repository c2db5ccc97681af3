"""tripwire.config: defaults, the TOML file, TRIPWIRE_* overrides, errors that name key and value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tripwire.config import Config, ConfigError, LogConfig, from_dict, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tripwire.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./tripwire.toml here
    config = load_config(environ={})
    assert config.source_path is None
    assert config.data_dir == Path("data")
    assert config.server.host == "127.0.0.1" and config.server.port == 8080
    assert config.log == LogConfig()
    assert config.log.backend == "sqlite"
    assert config.log.kafka_idempotent is False  # the test broker lacks it


def test_default_file_in_the_working_directory_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[server]\nport = 9000\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.server.port == 9000
    assert config.source_path == Path("tripwire.toml")


def test_file_values_and_relative_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
data_dir = "state"
[server]
host = "0.0.0.0"
port = 8181
[log]
backend = "kafka"
kafka_bootstrap = "kafka-1:9092,kafka-2:9092"
topic_prefix = "shop"
spill_max_bytes = 1048576
[rules]
dir = "rules.d"
""",
    )
    config = load_config(path, environ={})
    assert config.source_path == path
    assert config.data_dir == tmp_path / "state"  # relative to the config file
    assert config.server.host == "0.0.0.0" and config.server.port == 8181
    assert config.log.backend == "kafka"
    assert config.log.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert config.log.topic_prefix == "shop"
    assert config.log.spill_max_bytes == 1048576
    assert config.table("rules") == {"dir": "rules.d"}
    assert config.resolve("rules.d") == tmp_path / "rules.d"
    assert config.resolve("/abs/x") == Path("/abs/x")


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[log]\npartitions = 12\n")
    config = load_config(environ={"TRIPWIRE_CONFIG": str(path)})
    assert config.log.partitions == 12


def test_env_overrides_win_over_the_file_and_parse_toml_values(tmp_path: Path) -> None:
    path = write(tmp_path, "[log]\nbackend = \"sqlite\"\npartitions = 2\n")
    config = load_config(
        path,
        environ={
            "TRIPWIRE_LOG__BACKEND": "kafka",  # not TOML: taken as a plain string
            "TRIPWIRE_LOG__PARTITIONS": "8",  # TOML integer
            "TRIPWIRE_LOG__KAFKA_IDEMPOTENT": "true",
            "TRIPWIRE_SERVER__PORT": "9999",
            "TRIPWIRE_DATA_DIR": "/var/lib/tripwire",
            "TRIPWIRE_SOURCES__WEB__WRITE_KEY": "wk_live",
            "TRIPWIRE_SOURCES__WEB__ORIGINS": '["https://a.example", "https://b.example"]',
            "OTHER_VAR": "ignored",
        },
    )
    assert config.log.backend == "kafka"
    assert config.log.partitions == 8
    assert config.log.kafka_idempotent is True
    assert config.server.port == 9999
    assert config.data_dir == Path("/var/lib/tripwire")
    assert config.table("sources") == {
        "web": {"write_key": "wk_live", "origins": ["https://a.example", "https://b.example"]}
    }


@pytest.mark.parametrize(("text", "expected"), [("yes", True), ("on", True), ("TRUE", True), ("off", False), ("1", True), ("0", False)])
def test_bool_words_from_the_environment(tmp_path: Path, text: str, expected: bool) -> None:
    path = write(tmp_path, "")
    config = load_config(path, environ={"TRIPWIRE_LOG__KAFKA_IDEMPOTENT": text})
    assert config.log.kafka_idempotent is expected


@pytest.mark.parametrize(
    ("data", "key", "value"),
    [
        ({"log": {"backend": "postgres"}}, "log.backend", "'postgres'"),
        ({"log": {"partitions": 0}}, "log.partitions", "0"),
        ({"log": {"partitions": "many"}}, "log.partitions", "'many'"),
        ({"log": {"partitions": True}}, "log.partitions", "True"),
        ({"server": {"port": "http"}}, "server.port", "'http'"),
        ({"log": {"kafka_idempotent": "maybe"}}, "log.kafka_idempotent", "'maybe'"),
        ({"log": {"topic_prefix": 7}}, "log.topic_prefix", "7"),
    ],
)
def test_bad_values_name_the_key_and_the_value(data: dict, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    message = str(info.value)
    assert f"'{key}'" in message
    assert value in message


def test_unknown_keys_are_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"log\.partitons") as info:
        from_dict({"log": {"partitons": 4}})
    assert "partitions" in str(info.value).split("Known keys:")[1]
    assert "(did you mean 'log.partitions'?)" in str(info.value)
    with pytest.raises(ConfigError, match="datadir"):
        from_dict({"datadir": "x"})


def test_a_section_that_is_not_a_table_is_an_error() -> None:
    with pytest.raises(ConfigError, match="server"):
        from_dict({"server": "localhost"})
    config = from_dict({"rules": {"dir": "x"}})
    with pytest.raises(ConfigError, match="'rules.dir' has value 'x'. Not a table"):
        config.section("rules", RoomWithTable)


def test_env_override_of_a_non_table_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'data_dir = "x"\n')
    with pytest.raises(ConfigError, match="TRIPWIRE_DATA_DIR__SUB"):
        load_config(path, environ={"TRIPWIRE_DATA_DIR__SUB": "1"})


def test_missing_and_invalid_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})
    bad = write(tmp_path, "[log\nbackend = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(bad, environ={})
    assert str(bad) in str(info.value)


@dataclass(frozen=True)
class RoomSettings:
    interval_ms: int = 100
    name: str = "default"
    tags: list[str] = field(default_factory=list)
    ratio: float = 0.5
    home: Path | None = None


@dataclass(frozen=True)
class RoomWithTable:
    dir: dict = field(default_factory=dict)


def test_room_sections_build_dataclasses_with_checked_types() -> None:
    config = from_dict({"room": {"interval_ms": 250, "tags": "a, b ,c", "ratio": 1, "home": "~/x"}})
    settings = config.section("room", RoomSettings)
    assert settings.interval_ms == 250
    assert settings.tags == ["a", "b", "c"]  # comma-separated strings work for env overrides
    assert settings.ratio == 1.0
    assert settings.home == Path("~/x").expanduser()
    assert settings.name == "default"
    assert config.section("absent", RoomSettings) == RoomSettings()
    with pytest.raises(ConfigError, match=r"'room\.tags\[1\]' has value 3"):
        from_dict({"room": {"tags": ["a", 3]}}).section("room", RoomSettings)
    with pytest.raises(ConfigError, match=r"'room\.ratio' has value 'high'"):
        from_dict({"room": {"ratio": "high"}}).section("room", RoomSettings)


def test_config_is_immutable() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.data_dir = Path("/elsewhere")  # type: ignore[misc]


def test_errors_say_where_the_bad_value_was_set(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = "http"\n[collector]\nstrict = true\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).endswith(f"(in {path})")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"TRIPWIRE_SERVER__PORT": "abc"})
    assert "'server.port' has value <not shown>" in str(info.value)  # no error echoes an environment value
    assert str(info.value).endswith("(set by TRIPWIRE_SERVER__PORT)")
    config = load_config(write(tmp_path, "[collector]\nstrict = true\n"),
                         environ={"TRIPWIRE_COLLECTOR__PORT": "abc", "TRIPWIRE_SOURCES__WEB__WRITE_KEY": "7"})
    assert config.env_keys["collector.port"] == "TRIPWIRE_COLLECTOR__PORT"
    message = config.locate("Unknown config key 'collector.port'. Known keys: catalog, strict.")
    assert message.endswith("(set by TRIPWIRE_COLLECTOR__PORT)")
    assert config.locate("Config 'sources.web.write_key' has value 7. Not a string.").endswith(
        "(set by TRIPWIRE_SOURCES__WEB__WRITE_KEY)")
    assert config.locate("Config 'collector.strict' has value 2.").endswith(f"(in {tmp_path / 'tripwire.toml'})")
    assert from_dict({}).locate("Config 'x.y' is bad.") == "Config 'x.y' is bad."  # defaults: nowhere to point


def test_a_value_where_a_section_belongs_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"TRIPWIRE_LOG": "kafka"})
    message = str(info.value)
    assert "'log'" in message and "data_dir" in message and "[log]" in message
    assert message.endswith("(set by TRIPWIRE_LOG)")


@pytest.mark.parametrize(("data", "key", "secret"), [
    ({"sources": {"web": {"write_key": ["wk_live_topsecret"]}}}, "sources.web.write_key", "wk_live_topsecret"),
    ({"endpoints": {"crm": {"secret": ["whsec_abcdefgh"]}}}, "endpoints.crm.secret", "whsec_abcdefgh"),
    ({"sink": {"s3_secret": 123456789}}, "sink.s3_secret", "123456789"),
    ({"collector": {"pii_salt": {"salt": "pepper-9f2"}}}, "collector.pii_salt", "pepper-9f2"),
])
def test_a_secret_of_the_wrong_type_is_named_but_not_printed(data: dict, key: str, secret: str) -> None:
    from tripwire.config import build

    @dataclass(frozen=True)
    class Secrets:
        write_key: str = ""
        secret: str = ""
        s3_secret: str = ""
        pii_salt: str = ""

    section, rest = key.split(".", 1)
    values = data[section]
    while "." in rest:
        head, rest = rest.split(".", 1)
        values = values[head]
    with pytest.raises(ConfigError) as info:
        build(Secrets, values, key.rsplit(".", 1)[0])
    message = str(info.value)
    assert f"'{key}'" in message and "Not a string" in message
    assert secret not in message


def test_a_string_key_from_the_environment_keeps_its_text_even_when_it_looks_like_a_number() -> None:
    @dataclass(frozen=True)
    class Room:
        group: str = "g"
        port: int = 1
        ratio: float = 0.5
        flag: bool = False

    config = load_config(None, environ={"TRIPWIRE_ROOM__GROUP": "007", "TRIPWIRE_ROOM__PORT": "9000",
                                        "TRIPWIRE_ROOM__RATIO": "1e3", "TRIPWIRE_ROOM__FLAG": "true",
                                        "TRIPWIRE_SOURCES__WEB__WRITE_KEY": "1234567890"})
    room = config.section("room", Room)
    assert room == Room(group="007", port=9000, ratio=1000.0, flag=True)
    assert type(room.port) is int and type(room.ratio) is float
    config = load_config(None, environ={"TRIPWIRE_ROOM__GROUP": "2024"})
    assert config.section("room", Room).group == "2024"
    assert config.table("sources") == {}
    from tripwire.collector.config import load_sources

    web = load_sources(load_config(None, environ={"TRIPWIRE_SOURCES__WEB__WRITE_KEY": "1234567890"}))
    assert list(web) == ["1234567890"]


# secrets: endpoint URLs and header values ------------------------------------------------------


def test_mask_url_keeps_scheme_and_host_only() -> None:
    from tripwire.config import mask_url

    assert mask_url("https://hooks.slack.com/services/T000/B000/XXXXSLACK") == "https://hooks.slack.com/***"
    assert mask_url("https://crm.example/h?token=tok-123") == "https://crm.example/***"
    assert mask_url("http://user:pa55@crm.example:8443/x") == "http://crm.example:8443/***"
    assert mask_url("https://crm.example") == "https://crm.example" and mask_url("https://crm.example/") == "https://crm.example/"
    assert mask_url("crm.example/T000/XXXX") == "***" and mask_url("http://[::1/x") == "***"


@pytest.mark.parametrize(("environ", "var"), [
    ({"TRIPWIRE_ENDPOINTS__CRM__URL": "https://crm.example/T000/B000/tok-env-123",
      "TRIPWIRE_ENDPOINTS__CRM__HEADERS": '{X-Custom-Auth = "tok-raw-123"'}, "TRIPWIRE_ENDPOINTS__CRM__HEADERS"),
    ({"TRIPWIRE_ENDPOINTS__CRM__URL": "https://crm.example/T000/B000/tok-env-123",
      "TRIPWIRE_ENDPOINTS__CRM__HEADERS": '{X-Custom-Auth = 123}'}, "TRIPWIRE_ENDPOINTS__CRM__HEADERS"),
    ({"TRIPWIRE_ENDPOINTS__CRM__URL": "https://crm.example/T000/B000/tok-env-123",
      "TRIPWIRE_ENDPOINTS__CRM__CONCURRENCY": "tok-raw-123"}, "TRIPWIRE_ENDPOINTS__CRM__CONCURRENCY"),
    ({"TRIPWIRE_ENDPOINTS__CRM": "tok-raw-123"}, "TRIPWIRE_ENDPOINTS__CRM"),
])
def test_no_config_error_echoes_an_environment_value_or_a_header(environ: dict[str, str], var: str) -> None:
    from tripwire.triggers import endpoints

    config = load_config(None, environ=environ)
    with pytest.raises(ConfigError) as info:
        endpoints(config)
    message = config.locate(str(info.value))
    assert "'endpoints.crm" in message and message.endswith(f"(set by {var})"), message
    for secret in ("tok-raw-123", "tok-env-123", "123}"):
        assert secret not in message


def test_a_header_value_of_the_wrong_type_is_named_but_not_printed(tmp_path: Path) -> None:
    from tripwire.triggers import endpoints

    path = write(tmp_path, '[endpoints.crm]\nurl = "https://crm.example/hook"\nheaders = { X-Custom-Auth = 31337 }\n')
    config = load_config(path, environ={})
    with pytest.raises(ConfigError) as info:
        endpoints(config)
    message = config.locate(str(info.value))
    assert message.startswith("Config 'endpoints.crm.headers.X-Custom-Auth' has a value of type int (not shown")
    assert "31337" not in message and message.endswith(f"(in {path})")


def test_string_values_from_the_environment_are_not_echoed_by_any_check() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"TRIPWIRE_LOG__BACKEND": "kafka-tok-raw-123"})
    message = str(info.value)
    assert message == ("Config 'log.backend' has value <not shown>. Expected 'sqlite' or 'kafka'. "
                       "(set by TRIPWIRE_LOG__BACKEND)")
