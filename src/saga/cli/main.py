"""The `saga` command line: one typer app, one module per command group."""

from __future__ import annotations

import typer

from saga.cli import bench, demo, integrations, kernels, live, replay, show

app = typer.Typer(
    name="saga",
    help="SAGA: a workflow-aware scheduler for LLM agent workloads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo)
app.command("replay")(replay.replay)
app.add_typer(show.app, name="show")
app.add_typer(integrations.app, name="integrations")
app.add_typer(kernels.app, name="kernels")
app.add_typer(bench.app, name="bench")
bench.app.command("live")(live.live)


def _vllm_app() -> typer.Typer:
    """`saga vllm ...` when saga-vllm is installed; otherwise a group that says how to get it."""
    try:
        from saga.cli import vllm as vllm_cli
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("saga.vllm"):
            raise
        missing = typer.Typer(help="SAGA inside vLLM (not installed: pip install 'saga[vllm]').")

        @missing.callback(invoke_without_command=True)
        def _missing() -> None:
            typer.echo("error: saga-vllm is not installed; install it with "
                       "pip install 'saga[vllm]' (or uv sync --all-packages)", err=True)
            raise typer.Exit(code=2)

        return missing
    return vllm_cli.app


app.add_typer(_vllm_app(), name="vllm")


_GATEWAY_DEPS = ("saga.coordinator", "saga.vllm", "uvicorn", "fastapi", "httpx", "starlette")


def _cluster_app(module: str, extra: str = "cluster",
                 deps: tuple[str, ...] = ("saga.coordinator", "saga.vllm")) -> typer.Typer:
    """`saga coordinator|cluster|serve|gateway ...` when what they need is installed; else a
    group saying which extra gives it (``deps``: the top-level modules that may be missing)."""
    import importlib

    try:
        return importlib.import_module(f"saga.cli.{module}").app  # type: ignore[no-any-return]
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith(deps):
            raise
        missing = typer.Typer(help=f"SAGA's {module} command (not installed: "
                                   f"pip install 'saga[{extra}]').")
        name = exc.name

        @missing.callback(invoke_without_command=True)
        def _missing() -> None:
            typer.echo(f"error: {name} is not installed; install it with "
                       f"pip install 'saga[{extra}]' (or uv sync --all-packages)", err=True)
            raise typer.Exit(code=2)

        return missing


app.add_typer(_cluster_app("coordinator"), name="coordinator")
app.add_typer(_cluster_app("cluster"), name="cluster")
app.add_typer(_cluster_app("gateway", "serve", _GATEWAY_DEPS), name="gateway")
app.add_typer(_cluster_app("serve", "serve", _GATEWAY_DEPS), name="serve")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
