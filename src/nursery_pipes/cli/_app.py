"""The ``nursery-pipes`` command line (typer + rich).

Exit codes: 0 success; 1 the pipeline failed while running (a node error,
named); 2 a user mistake (bad manifest, config, input file or flag) — nothing
was started. No traceback is shown for a user mistake.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .._config import RuntimeConfig, load_config
from .._errors import ManifestError, NurseryPipesError, SessionError
from ..runtime import Runtime, SessionPlan

__all__ = ["app", "main"]

app = typer.Typer(
    name="nursery-pipes",
    help="Run media/ML pipeline manifests under trio supervision.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

console = Console(stderr=True)
out = Console()

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="runtime.toml to use (limits, routing, node modules).", dir_okay=False
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]

T = TypeVar("T")


def _fail(message: str, code: int) -> NoReturn:
    # Messages carry user text and "[section.key]" paths: escape them, or rich eats them as markup.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _guard(fn: Callable[[], T], *, as_json: bool = False) -> T:
    """Run ``fn``; turn our errors into a message and an exit code (never a traceback)."""
    try:
        return fn()
    except ManifestError as exc:
        if as_json:
            out.print_json(
                data={"valid": False, "errors": [{"path": i.path, "message": i.message} for i in exc.issues]}
            )
            raise typer.Exit(2) from None
        _print_manifest_error(exc)
        raise typer.Exit(2) from None
    except SessionError as exc:
        _fail(str(exc), 1)
    except NurseryPipesError as exc:
        _fail(str(exc), 2)


def _print_manifest_error(exc: ManifestError) -> None:
    where = f" {escape(exc.source)}" if exc.source else ""
    count = len(exc.issues)
    console.print(
        f"[bold red]invalid manifest{where}:[/] {count} problem{'s' * (count != 1)}", highlight=False
    )
    for issue in exc.issues:
        path = f"[cyan]{escape(issue.path)}[/]: " if issue.path else ""
        console.print(f"  • {path}{escape(issue.message)}", highlight=False)


def _runtime(config_path: Path | None) -> Runtime:
    config = load_config(config_path) if config_path else RuntimeConfig()
    return Runtime(config)


@app.command()
def validate(
    manifest: Annotated[Path, typer.Argument(help="Manifest JSON file.", dir_okay=False)],
    config: ConfigOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Check a manifest; list every problem with its JSON path (exit 2 if invalid).

    The pipeline is planned too (nothing starts): a node routed to an executor this runtime
    lacks, or one that cannot run it, is reported here rather than when it runs."""

    def check() -> SessionPlan:
        return _runtime(config).plan(manifest)

    plan = _guard(check, as_json=as_json)
    m = plan.manifest
    if as_json:
        out.print_json(
            data={
                "valid": True,
                "name": m.name,
                "nodes": len(m.nodes),
                "connections": len(m.connections),
                "assignments": {
                    nid: {"executor": a.executor, "reason": a.reason} for nid, a in plan.assignments.items()
                },
            }
        )
    else:
        console.print(
            f"[green]✓[/] {escape(str(manifest))}: valid — {escape(repr(m.name))}, {len(m.nodes)} nodes, "
            f"{len(m.connections)} connections",
            highlight=False,
        )
        for nid, a in plan.assignments.items():
            console.print(f"  {escape(nid)} → {a.executor} ({escape(a.reason)})", highlight=False)


@app.command()
def nodes(
    config: ConfigOption = None,
    as_json: JsonFlag = False,
    testing: Annotated[
        bool,
        typer.Option(
            "--testing",
            help="Include the fault-injection test nodes, as runtime.toml [nodes] testing = true does.",
        ),
    ] = False,
) -> None:
    """List the registered node types with their default executor and params."""
    runtime = _guard(lambda: _nodes_runtime(config, testing=testing))
    infos = [runtime.registry.info(name) for name in runtime.registry]
    if as_json:
        out.print_json(
            data=[
                {
                    "node_type": i.node_type,
                    "executor": i.executor,
                    "accepts": list(i.accepts),
                    "produces": list(i.produces),
                    "params": list(i.params),
                    "description": i.description,
                    "origin": i.origin,
                }
                for i in infos
            ]
        )
        return
    table = Table(title="Registered node types", show_lines=False)
    for column in ("node type", "executor", "in → out", "params", "description"):
        table.add_column(column)
    for i in infos:
        params = ", ".join(_param_text(p) for p in i.params) or "—"
        kinds = f"{_kinds(i.accepts)} → {_kinds(i.produces)}"
        table.add_row(i.node_type, i.executor or "(routing rules)", kinds, params, i.description)
    out.print(table)


def _nodes_runtime(config_path: Path | None, *, testing: bool) -> Runtime:
    config = load_config(config_path) if config_path else RuntimeConfig()
    if testing:
        config = msgspec.structs.replace(config, nodes=msgspec.structs.replace(config.nodes, testing=True))
    return Runtime(config)


def _param_text(p: dict[str, Any]) -> str:
    if p["required"]:
        return f"{p['name']}: {p['type']} (required)"
    return f"{p['name']}: {p['type']} = {json.dumps(p['default'])}"


def _kinds(kinds: tuple[str, ...]) -> str:
    return "any" if len(kinds) == 6 else "/".join(kinds)


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="Manifest JSON file.", dir_okay=False)],
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help="NODE=FILE: feed FILE to source node NODE (WAV/FLAC, .json, .jsonl, .txt, other bytes). Repeatable.",
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Write each sink's output here.", file_okay=False),
    ] = None,
    chunk_ms: Annotated[
        float, typer.Option(help="Split audio inputs into chunks of this many ms (0: one frame).", min=0)
    ] = 20.0,
    config: ConfigOption = None,
    as_json: JsonFlag = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show a failing node's traceback.")
    ] = False,
    server: Annotated[
        str | None,
        typer.Option("--server", "-s", help="HOST:PORT of a server to run on instead of locally."),
    ] = None,
    token_env: Annotated[
        str | None,
        typer.Option(help="Environment variable holding the server's bearer token (with --server)."),
    ] = None,
    signals: Annotated[
        list[str] | None,
        typer.Option(
            "--signal",
            help="AFTER:NAME[@NODE,...]: once AFTER input frames are sent, send control signal NAME "
            "(interrupt, cancel_turn, flush, ...) to those nodes (all if none), ahead of their queued "
            "frames. Repeatable.",
        ),
    ] = None,
) -> None:
    """Run a manifest on input files (locally, or on a server with --server) and print the sink outputs."""
    if server is not None:
        from ._remote import run_remote

        token = os.environ.get(token_env, "") if token_env else None
        raise typer.Exit(
            _guard(
                lambda: run_remote(
                    address=server,
                    manifest=manifest,
                    input_specs=inputs or [],
                    output_dir=output_dir,
                    chunk_ms=chunk_ms,
                    token=token or None,
                    as_json=as_json,
                    console=console,
                    out=out,
                    guard=_guard,
                    signal_specs=signals or [],
                ),
                as_json=as_json,
            )
        )
    from ._run import run_local

    code = run_local(
        manifest=manifest,
        input_specs=inputs or [],
        output_dir=output_dir,
        chunk_ms=chunk_ms,
        runtime_factory=lambda: _runtime(config),
        as_json=as_json,
        verbose=verbose,
        console=console,
        out=out,
        guard=_guard,
        signal_specs=signals or [],
    )
    raise typer.Exit(code)


@app.command()
def serve(
    config: ConfigOption = None,
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on (default 127.0.0.1:50051).")
    ] = None,
    auth_token_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the bearer token clients must send.")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="TLS certificate chain (PEM).", dir_okay=False)
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).", dir_okay=False)] = None,
    warm_pool: Annotated[
        int | None, typer.Option(help="Worker processes to keep pre-started.", min=0)
    ] = None,
    testing_nodes: Annotated[
        bool,
        typer.Option(
            "--testing-nodes", help="Register the fault-injection test nodes (never in production)."
        ),
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(help="Log lines as 'text' or 'json' (one object per line, with session and node ids)."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="DEBUG, INFO (default), WARNING, ERROR or CRITICAL.")
    ] = None,
    metrics_listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to serve Prometheus /metrics on (off by default).")
    ] = None,
    monitor: Annotated[
        bool | None,
        typer.Option(
            "--monitor/--no-monitor",
            help="Serve the Monitor service that `nursery-pipes top` reads (on by default).",
        ),
    ] = None,
    tracing: Annotated[
        bool,
        typer.Option(
            "--tracing",
            help="Export OpenTelemetry traces by OTLP/HTTP (needs the otel extra; off by default).",
        ),
    ] = False,
    otlp_endpoint: Annotated[
        str | None,
        typer.Option(help="OTLP/HTTP collector base URL, e.g. http://127.0.0.1:4318 (turns --tracing on)."),
    ] = None,
    frame_sample_ratio: Annotated[
        float | None,
        typer.Option(help="Share of inputs whose frames get a span in every node (0..1, default 0.01)."),
    ] = None,
) -> None:
    """Serve the remotemedia.v1 gRPC API (plus health and reflection) until SIGTERM/SIGINT.

    The first signal drains: no new sessions, running ones get server.drain_timeout_secs to finish.
    Settings: flags > NURSERY_PIPES_<SECTION>__<KEY> environment variables > runtime.toml > defaults.
    """
    from ._serve import serve as run_server

    flags = {
        "server.listen": listen,
        "server.auth_token_env": auth_token_env,
        "server.tls_cert": str(tls_cert) if tls_cert else None,
        "server.tls_key": str(tls_key) if tls_key else None,
        "multiprocess.warm_pool": warm_pool,
        "nodes.testing": True if testing_nodes else None,
        "logging.format": log_format,
        "logging.level": log_level.upper() if log_level else None,
        "metrics.listen": metrics_listen,
        "monitor.enabled": monitor,
        "tracing.enabled": True if tracing or otlp_endpoint else None,
        "tracing.otlp_endpoint": otlp_endpoint,
        "tracing.frame_sample_ratio": frame_sample_ratio,
    }
    raise typer.Exit(_guard(lambda: run_server(config, flags, _announce)))


@app.command()
def health(
    server: Annotated[
        str, typer.Option("--server", "-s", help="HOST:PORT of the server to ask.")
    ] = "127.0.0.1:50051",
    service: Annotated[str, typer.Option(help="Service to ask about ('' = the server as a whole).")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.", min=0.1)] = 3.0,
) -> None:
    """gRPC health check (grpc.health.v1): exit 0 if the server is SERVING, else 1.

    A draining server answers NOT_SERVING on connections it already had, and refuses new ones:
    either way this exits 1. For container HEALTHCHECKs and scripts."""
    from ._health import check_health

    serving, text = _guard(lambda: check_health(server, service, timeout))
    (out if serving else console).print(escape(text), highlight=False)
    raise typer.Exit(0 if serving else 1)


def _announce(message: str) -> None:
    console.print(f"[bold]nursery-pipes:[/] {escape(message)}", highlight=False)
    console.file.flush()


@app.command()
def top(
    server: Annotated[
        str, typer.Option("--server", "-s", help="HOST:PORT of the nursery-pipes server to watch.")
    ] = "127.0.0.1:50051",
    interval: Annotated[
        float, typer.Option(help="Seconds between refreshes (the server keeps it within 0.25…60).", min=0.25)
    ] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="Print one view (rates over one interval) and exit.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per refresh, one per line, on stdout.")
    ] = False,
    token_env: Annotated[
        str | None,
        typer.Option(help="Environment variable holding the server's bearer token."),
    ] = None,
) -> None:
    """A live view of a server: sessions, nodes, executors, frame rates, queues, restarts, workers.

    Reads the server's Monitor service (on by default; runtime.toml [monitor] enabled, serve
    --no-monitor). Ctrl-C quits. Exit 2 when the server cannot be watched (unreachable, monitor
    off, wrong token); a server lost while watching is watched again until Ctrl-C.
    """
    from ._top import run_top

    token = os.environ.get(token_env, "") if token_env else None
    raise typer.Exit(
        run_top(
            address=server,
            interval=interval,
            once=once,
            as_json=as_json,
            token=token or None,
            console=console,
            out=out,
        )
    )


@app.command()
def demo(
    keep: Annotated[Path, typer.Option(help="Directory for the demo's input and output files.")] = Path(
        "out/demo"
    ),
) -> None:
    """The main job: start a server on loopback, stream an example through it, print the results, stop it."""
    from ._demo import run_demo

    raise typer.Exit(_guard(lambda: run_demo(keep, console=console, out=out)))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
