"""``nursery-pipes serve``: the gRPC server, with signals for graceful drain.

Configuration precedence: command-line flags > environment > runtime.toml > defaults.
Environment variables are ``NURSERY_PIPES_<SECTION>__<KEY>`` (e.g.
``NURSERY_PIPES_SERVER__LISTEN=0.0.0.0:50051``, ``NURSERY_PIPES_LIMITS__MAX_SESSIONS=8``);
values are read as TOML values when they parse as one (numbers, booleans), else as strings.
"""

from __future__ import annotations

import os
import signal
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import trio

from .._config import RuntimeConfig, load_config
from .._errors import ConfigError, NurseryPipesError

__all__ = ["ENV_PREFIX", "apply_overrides", "serve", "sole_leaf"]

ENV_PREFIX = "NURSERY_PIPES_"


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(
    config: RuntimeConfig, *, env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None
) -> RuntimeConfig:
    """A new config with environment variables, then flags (``{"server.listen": ...}``), applied."""
    doc: dict[str, Any] = msgspec.to_builtins(config)
    for name, text in (os.environ if env is None else env).items():
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        _set(doc, section, key, _env_value(text), f"environment variable {name}")
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, _, key = dotted.partition(".")
            _set(doc, section, key, value, f"--{key.replace('_', '-')}")
    try:
        return msgspec.convert(doc, RuntimeConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"configuration override: {exc}") from None


def _set(doc: dict[str, Any], section: str, key: str, value: Any, origin: str) -> None:
    if section not in doc or not isinstance(doc[section], dict):
        raise ConfigError(f"{origin}: unknown configuration section {section!r}")
    if key not in doc[section]:
        raise ConfigError(f"{origin}: unknown key {key!r} in [{section}]")
    doc[section][key] = value


def serve(config_path: Path | None, flags: Mapping[str, Any], announce: Any) -> int:
    """Run the server until SIGTERM/SIGINT (drain) — a second signal stops at once."""
    config = apply_overrides(load_config(config_path), flags=flags)
    config.auth_token_value()  # fails closed, before anything starts: a named but unset variable
    trio.run(_serve, config, announce)
    return 0


async def _serve(config: RuntimeConfig, announce: Any) -> None:
    from ..runtime import Runtime
    from ..service import Server, parse_listen

    host, _ = parse_listen(config.server.listen)
    listening = False

    def started(port: int) -> None:
        nonlocal listening
        listening = True
        announce(f"listening on {host}:{port}")

    try:
        async with Runtime(config) as runtime:
            server = Server(runtime)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_signals, server, nursery.cancel_scope, announce)
                await server.serve(task_status=_Started(started))
                nursery.cancel_scope.cancel()  # drained: stop watching signals
    except BaseExceptionGroup as group:
        # The nursery wraps what serve() raised: a bad TLS file or an address that cannot be
        # bound is a user mistake to report in one line (exit 2), not a traceback.
        error = sole_leaf(group)
        if isinstance(error, NurseryPipesError):
            raise error from None
        if isinstance(error, OSError) and not listening:
            raise ConfigError(f"cannot listen on {config.server.listen}: {error.strerror or error}") from None
        raise
    announce("stopped")


def sole_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside ``group`` and its nested groups, or None if there are several."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


class _Started:
    def __init__(self, callback: Any) -> None:
        self._callback = callback

    def started(self, value: Any = None) -> None:
        self._callback(value)


async def _watch_signals(server: Any, scope: trio.CancelScope, announce: Any) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if server.accepting:
                announce(
                    f"{signal.Signals(signum).name}: draining — no new sessions, running ones get "
                    f"{server.config.server.drain_timeout_secs:g} s"
                )
                server.drain()
            else:
                announce(f"{signal.Signals(signum).name} again: stopping now")
                scope.cancel()
                return
