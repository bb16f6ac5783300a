"""runtime.toml: defaults, every section, errors naming the key, and precedence with a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nursery_pipes import Manifest, ManifestError, Runtime
from nursery_pipes._config import (
    LimitsConfig,
    MultiprocessDefaults,
    NodesConfig,
    RoutingConfig,
    RoutingRuleConfig,
    RuntimeConfig,
    ServerConfig,
    SupervisionDefaults,
    load_config,
)
from nursery_pipes._errors import ConfigError
from nursery_pipes.nodes._registry import builtin_registry
from nursery_pipes.runtime._plan import SessionSettings, resolve_settings

FULL = """
[server]
listen = "0.0.0.0:6000"
max_message_bytes = 1048576
tls_cert = "/etc/cert.pem"
tls_key = "/etc/key.pem"
auth_token = "inline"
drain_timeout_secs = 0
metrics_interval_secs = 0.5

[limits]
max_sessions = 4
max_processes = 8
max_processes_per_session = 6

[multiprocess]
max_processes_per_session = 5
channel_capacity = 7
init_timeout_secs = 12.5
enable_backpressure = false
python_executable = "/usr/bin/python3"
grace_period_secs = 0.25
worker_type = "spawn"
warm_pool = 2
slot_count = 4
slot_size = 8192
checksums = true

[routing]
default = "multiprocess"
seed_rule = false
explicit = { SpeechRecognitionNode = "multiprocess", PassThrough = "inprocess" }
rules = [
  { pattern = "*Model*", executor = "multiprocess", priority = 20 },
  { pattern = "Audio*", executor = "inprocess" },
]

[supervision]
strategy = "rest_for_one"
max_restarts = 10
within_secs = 60
restart = "permanent"

[nodes]
modules = ["my_company.nodes", "other.nodes"]
entry_points = false
testing = true
"""


def test_defaults() -> None:
    config = load_config()
    assert config == RuntimeConfig()
    assert config.server.listen == "127.0.0.1:50051"  # loopback by default
    assert config.limits == LimitsConfig(max_sessions=64, max_processes=64, max_processes_per_session=16)
    mp = config.multiprocess
    assert (mp.max_processes_per_session, mp.channel_capacity, mp.init_timeout_secs) == (10, 100, 30.0)
    assert (mp.enable_backpressure, mp.grace_period_secs, mp.worker_type) == (True, 2.0, "forkserver")
    assert config.routing == RoutingConfig(default="inprocess", seed_rule=True, explicit={}, rules=[])
    assert config.nodes == NodesConfig(modules=[], entry_points=True, testing=False)
    # No default policy: sessions fail fast, as before supervision was configurable.
    assert config.supervision == SupervisionDefaults(
        strategy=None, max_restarts=None, within_secs=None, restart="transient"
    )
    assert not config.supervision.sets_policy
    assert load_config(text="") == config


def test_every_section(tmp_path: Path) -> None:
    path = tmp_path / "runtime.toml"
    path.write_text(FULL)
    config = load_config(path)
    assert config == load_config(text=FULL) == load_config(str(path))
    assert config.server == ServerConfig(
        listen="0.0.0.0:6000",
        max_message_bytes=1048576,
        tls_cert="/etc/cert.pem",
        tls_key="/etc/key.pem",
        auth_token="inline",
        drain_timeout_secs=0.0,
        metrics_interval_secs=0.5,
    )
    assert config.limits == LimitsConfig(max_sessions=4, max_processes=8, max_processes_per_session=6)
    assert config.multiprocess == MultiprocessDefaults(
        max_processes_per_session=5,
        channel_capacity=7,
        init_timeout_secs=12.5,
        enable_backpressure=False,
        python_executable="/usr/bin/python3",
        grace_period_secs=0.25,
        worker_type="spawn",
        warm_pool=2,
        slot_count=4,
        slot_size=8192,
        checksums=True,
    )
    assert config.routing == RoutingConfig(
        default="multiprocess",
        seed_rule=False,
        explicit={"SpeechRecognitionNode": "multiprocess", "PassThrough": "inprocess"},
        rules=[
            RoutingRuleConfig(pattern="*Model*", executor="multiprocess", priority=20),
            RoutingRuleConfig(pattern="Audio*", executor="inprocess", priority=0),
        ],
    )
    assert config.nodes == NodesConfig(
        modules=["my_company.nodes", "other.nodes"], entry_points=False, testing=True
    )
    assert config.supervision == SupervisionDefaults(
        strategy="rest_for_one", max_restarts=10, within_secs=60.0, restart="permanent"
    )
    assert isinstance(config.supervision.within_secs, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[bogus]\nx = 1", "unknown field `bogus`"),
        ("top = 1", "unknown field `top`"),
        ("[limits]\nfoo = 1", "[limits] Object contains unknown field `foo`"),
        ("[server]\nlisten_addr = 'x'", "[server] Object contains unknown field `listen_addr`"),
        ("[nodes]\nmodule = ['x']", "[nodes] Object contains unknown field `module`"),
        ("[supervision]\nintensity = 3", "[supervision] Object contains unknown field `intensity`"),
        (
            "[routing]\nrules = [{ pattern = '*', executor = 'multiprocess', prio = 1 }]",
            "[routing.rules[0]] Object contains unknown field `prio`",
        ),
    ],
)
def test_unknown_keys_and_sections_are_rejected_by_name(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(text=text)
    assert str(info.value).startswith("<runtime.toml>: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nlisten = 1", "[server.listen] Expected `str`, got `int`"),
        ("[server]\nmax_message_bytes = 0", "[server.max_message_bytes] Expected `int` >= 1"),
        ("[server]\nmetrics_interval_secs = 0", "[server.metrics_interval_secs] Expected `float` > 0.0"),
        ("[limits]\nmax_sessions = 0", "[limits.max_sessions] Expected `int` >= 1"),
        ("[limits]\nmax_processes = 'many'", "[limits.max_processes] Expected `int`, got `str`"),
        (
            "[multiprocess]\nchannel_capacity = 10001",
            "[multiprocess.channel_capacity] Expected `int` <= 10000",
        ),
        (
            "[multiprocess]\ninit_timeout_secs = 0.5",
            "[multiprocess.init_timeout_secs] Expected `float` >= 1.0",
        ),
        (
            "[multiprocess]\nclose_timeout_secs = 0.5",
            "[multiprocess.close_timeout_secs] Expected `float` >= 1.0",
        ),
        (
            "[multiprocess]\nclose_timeout_secs = 301",
            "[multiprocess.close_timeout_secs] Expected `float` <= 300.0",
        ),
        ("[multiprocess]\nenable_backpressure = 'yes'", "[multiprocess.enable_backpressure] Expected `bool`"),
        ("[multiprocess]\nworker_type = 'fork'", "[multiprocess.worker_type] Invalid enum value 'fork'"),
        ("[multiprocess]\nslot_count = 1", "[multiprocess.slot_count] Expected `int` >= 2"),
        ("[routing]\ndefault = 'GPU!'", "[routing.default] Expected `str` matching regex"),
        (
            "[routing]\nrules = [{ pattern = '*', executor = 'multiprocess', priority = 'high' }]",
            "[routing.rules[0].priority] Expected `int`, got `str`",
        ),
        (
            "[routing]\nrules = [{ executor = 'inprocess' }]",
            "[routing.rules[0]] Object missing required field `pattern`",
        ),
        ("[nodes]\nmodules = 'a.b'", "[nodes.modules] Expected `array`, got `str`"),
        ("[nodes]\ntesting = 1", "[nodes.testing] Expected `bool`, got `int`"),
        ("limits = 3", "[limits] Expected `object`, got `int`"),
        (
            "[supervision]\nstrategy = 'one-for-one'",
            "[supervision.strategy] Invalid enum value 'one-for-one'",
        ),
        ("[supervision]\nmax_restarts = -1", "[supervision.max_restarts] Expected `int` >= 0"),
        ("[supervision]\nmax_restarts = 1001", "[supervision.max_restarts] Expected `int` <= 1000"),
        (
            "[supervision]\nmax_restarts = 2.5",
            "[supervision.max_restarts] Expected `int | null`, got `float`",
        ),
        ("[supervision]\nwithin_secs = 0", "[supervision.within_secs] Expected `float` > 0.0"),
        ("[supervision]\nwithin_secs = 3601", "[supervision.within_secs] Expected `float` <= 3600.0"),
        ("[supervision]\nrestart = 'always'", "[supervision.restart] Invalid enum value 'always'"),
    ],
)
def test_type_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(text=text)
    assert message in str(info.value)


def test_per_session_default_must_fit_the_global_cap() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(text="[multiprocess]\nmax_processes_per_session = 20")
    assert str(info.value) == (
        "<runtime.toml>: multiprocess.max_processes_per_session: 20 exceeds this server's limit of 16 "
        "processes per session (limits.max_processes_per_session)"
    )
    with pytest.raises(ConfigError, match=r"session: 5 exceeds this server's limit of 4 processes"):
        load_config(
            text="[limits]\nmax_processes_per_session = 4\n[multiprocess]\nmax_processes_per_session = 5"
        )
    ok = load_config(
        text="[limits]\nmax_processes_per_session = 5\n[multiprocess]\nmax_processes_per_session = 5"
    )
    assert ok.multiprocess.max_processes_per_session == 5


def test_lowering_the_cap_alone_lowers_the_per_session_default() -> None:
    config = load_config(text="[limits]\nmax_processes_per_session = 3")
    assert config.limits.max_processes_per_session == 3
    assert config.multiprocess.max_processes_per_session == 3
    assert resolve_settings(manifest(), config).max_processes == 3
    # A cap above the default leaves the default alone; an explicit default above the cap is an error.
    assert (
        load_config(text="[limits]\nmax_processes_per_session = 40").multiprocess.max_processes_per_session
        == 10
    )
    with pytest.raises(ConfigError, match=r"multiprocess.max_processes_per_session: 10 exceeds"):
        load_config(
            text="[limits]\nmax_processes_per_session = 3\n[multiprocess]\nmax_processes_per_session = 10"
        )


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml: No such file or directory"):
        load_config(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits\nmax_sessions = 1")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: invalid TOML: ")
    typo = tmp_path / "typo.toml"
    typo.write_text("[limits]\nmax_session = 1\n")
    with pytest.raises(
        ConfigError, match=r"typo\.toml: \[limits\] Object contains unknown field `max_session`"
    ):
        load_config(typo)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[routing]\ndefault = 'gpu'", "[routing] default: no executor named 'gpu'"),
        ("[routing]\nexplicit = { A = 'gpu' }", "[routing.explicit] A: no executor named 'gpu'"),
        (
            "[routing]\nrules = [{ pattern = '*Model', executor = 'gpu' }]",
            "[routing] rules[0] (*Model): no executor named 'gpu'",
        ),
    ],
)
def test_routing_to_an_executor_the_runtime_lacks_is_a_config_error(text: str, message: str) -> None:
    """Executor names are checked against the runtime's executors (built-ins and plugins):
    a typo in runtime.toml must not route nodes silently elsewhere."""
    with pytest.raises(ConfigError) as info:
        Runtime(load_config(text=text))
    assert str(info.value).startswith(message)
    assert "available: inprocess, multiprocess, remote, thread" in str(info.value)


def test_auth_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NP_TEST_TOKEN", "s3cret")
    config = load_config(text='[server]\nauth_token = "inline"\nauth_token_env = "NP_TEST_TOKEN"')
    assert config.auth_token_value() == "s3cret"  # the environment variable wins over the inline token
    monkeypatch.delenv("NP_TEST_TOKEN")
    # named but unset or empty: fail closed (never no auth, never the inline fallback)
    with pytest.raises(ConfigError, match="NP_TEST_TOKEN, which is not set; refusing to serve without auth"):
        config.auth_token_value()
    monkeypatch.setenv("NP_TEST_TOKEN", "  ")
    with pytest.raises(ConfigError, match="NP_TEST_TOKEN, which is empty"):
        config.auth_token_value()
    assert load_config(text='[server]\nauth_token = "inline"').auth_token_value() == "inline"
    assert load_config().auth_token_value() == ""  # auth disabled by default


# ---------------------------------------------------------------------------------------------
# Precedence: manifest > runtime.toml > built-in defaults; global limits win

REGISTRY = builtin_registry()


def manifest(multiprocess: dict[str, Any] | None = None) -> Manifest:
    metadata: dict[str, Any] = {"name": "prec"}
    if multiprocess is not None:
        metadata["multiprocess"] = multiprocess
    return Manifest.from_dict(
        {
            "version": "v1",
            "metadata": metadata,
            "nodes": [{"id": "a", "node_type": "PassThrough"}],
            "connections": [],
        },
        registry=REGISTRY,
    )


def test_builtin_defaults_when_nothing_is_set() -> None:
    assert resolve_settings(manifest(), RuntimeConfig()) == SessionSettings(
        channel_capacity=100,
        init_timeout_secs=30.0,
        max_processes=10,
        enable_backpressure=True,
        grace_period_secs=2.0,
        python_executable="",
    )


def test_runtime_toml_overrides_defaults() -> None:
    config = load_config(text=FULL)
    settings = resolve_settings(manifest({}), config)
    assert settings == SessionSettings(
        channel_capacity=7,
        init_timeout_secs=12.5,
        max_processes=5,
        enable_backpressure=False,
        grace_period_secs=0.25,
        python_executable="/usr/bin/python3",
    )


def test_manifest_overrides_runtime_toml() -> None:
    config = load_config(text=FULL)
    settings = resolve_settings(
        manifest(
            {
                "channel_capacity": 3,
                "init_timeout_secs": 2,
                "max_processes_per_session": 6,
                "enable_backpressure": True,
                "python_executable": "python3",
            }
        ),
        config,
    )
    assert settings == SessionSettings(
        channel_capacity=3,
        init_timeout_secs=2.0,
        max_processes=6,
        enable_backpressure=True,  # an explicit true beats the config's false
        grace_period_secs=0.25,  # not a manifest setting
        python_executable="python3",
    )
    assert isinstance(settings.init_timeout_secs, float)


def test_toml_nested_ten_thousand_levels_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(text="[nodes]\nmodules = " + "[" * 10_000 + "]" * 10_000)


def test_close_timeout_manifest_beats_runtime_toml_beats_default() -> None:
    assert resolve_settings(manifest(), RuntimeConfig()).close_timeout_secs == 30.0
    config = load_config(text="[multiprocess]\nclose_timeout_secs = 12")
    assert resolve_settings(manifest({}), config).close_timeout_secs == 12.0
    settings = resolve_settings(manifest({"close_timeout_secs": 3}), config)
    assert settings.close_timeout_secs == 3.0
    assert isinstance(settings.close_timeout_secs, float)


def test_manifest_false_backpressure_beats_config_true() -> None:
    settings = resolve_settings(manifest({"enable_backpressure": False}), RuntimeConfig())
    assert settings.enable_backpressure is False


def test_global_cap_wins_over_the_manifest() -> None:
    config = load_config(
        text="[limits]\nmax_processes_per_session = 4\n[multiprocess]\nmax_processes_per_session = 2"
    )
    assert resolve_settings(manifest({"max_processes_per_session": 4}), config).max_processes == 4
    with pytest.raises(ManifestError) as info:
        resolve_settings(manifest({"max_processes_per_session": 5}), config)
    assert [(i.path, i.message) for i in info.value.issues] == [
        (
            "metadata.multiprocess.max_processes_per_session",
            "5 exceeds this server's limit of 4 processes per session (limits.max_processes_per_session)",
        )
    ]


def test_runtime_checks_manifests_against_its_cap_when_it_plans_them() -> None:
    from nursery_pipes import Runtime

    runtime = Runtime(load_config(text="[limits]\nmax_processes_per_session = 3"), registry=REGISTRY)
    doc = manifest({"max_processes_per_session": 9}).to_dict()
    assert runtime.manifest(doc).multiprocess.max_processes_per_session == 9  # a valid manifest
    with pytest.raises(ManifestError) as info:
        runtime.plan(doc)
    assert [i.path for i in info.value.issues] == ["metadata.multiprocess.max_processes_per_session"]


def test_the_readme_example_is_a_valid_runtime_toml() -> None:
    """README's runtime.toml block loads, and its [supervision] is the policy the README
    describes (what a session gets whose manifest sets none)."""
    from nursery_pipes.runtime import RestartType, Strategy, SupervisionPolicy
    from nursery_pipes.runtime._plan import resolve_restart, resolve_supervision

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("### Configuration (`runtime.toml`)", 1)[1].split("```toml\n", 1)[1]
    config = load_config(text=block.split("```", 1)[0])
    assert config.supervision == SupervisionDefaults(
        strategy="one_for_one", max_restarts=3, within_secs=5.0, restart="transient"
    )
    m = manifest()
    assert resolve_supervision(m, config) == SupervisionPolicy(Strategy.ONE_FOR_ONE, 3, 5.0)
    assert resolve_restart(m.nodes[0], config) is RestartType.TRANSIENT
