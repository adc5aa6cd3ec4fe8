"""`saga show ...`: what SAGA is configured with — presets, the reference deployment."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from saga.cli.render import console, print_table
from saga.policy.parity import mechanism_rows
from saga.policy.presets import PRESETS, PolicySpec
from saga.policy.spec import GB, GiB, check_reference_invariants

app = typer.Typer(help="Show SAGA's presets and reference deployment.", no_args_is_help=True)


def _value(value: object) -> str:
    """A layer or switch of a preset as text: a policy as ``name(k=v, ...)``, an absent layer
    as ``off``, a switch as ``yes``/``no``, a switch layer by its registered name."""
    if value is None:
        return "off"
    if isinstance(value, PolicySpec):
        return value.describe()
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def presets_table() -> Table:
    """One block of rows per preset: every layer and switch of :meth:`Preset.layers`, in its
    order, so the table and ``--json`` always say the same.

    A row per layer (rather than a column) keeps the policies' parameters whole in 80
    terminal columns."""
    table = Table(title="SAGA presets: every layer and switch (off: the layer is not run)",
                  title_justify="left", show_edge=False)  # edges would fold saga's parameters
    table.add_column("preset", no_wrap=True)
    table.add_column("layer", no_wrap=True)
    table.add_column("policy or setting", overflow="fold")
    for preset in PRESETS.values():
        rows = list(preset.layers())  # every key is a field or property of the preset
        for i, layer in enumerate(rows):
            table.add_row(preset.name if i == 0 else "", layer, _value(getattr(preset, layer)),
                          end_section=i == len(rows) - 1)
    return table


def presets_json() -> dict[str, dict[str, Any]]:
    """``{preset: {"description": ..., **Preset.layers()}}`` for every preset."""
    return {name: {"description": p.description, **p.layers()} for name, p in PRESETS.items()}


def mechanisms_table() -> Table:
    """The parity table: each preset's mechanisms, the field that models each (or ``left
    out``) and where the system documents it; a note follows the mechanism's name."""
    table = Table(title="What each preset models, with sources (docs/peers.md)",
                  title_justify="left")
    table.add_column("preset", no_wrap=True)
    table.add_column("mechanism (note)", overflow="fold")
    table.add_column("modelled by", no_wrap=True)
    table.add_column("source", overflow="fold")
    rows = mechanism_rows()
    for i, row in enumerate(rows):
        first = i == 0 or rows[i - 1]["preset"] != row["preset"]
        last = i == len(rows) - 1 or rows[i + 1]["preset"] != row["preset"]
        what = row["mechanism"] + (f" ({row['note']})" if row["note"] else "")
        table.add_row(row["preset"] if first else "", what, row["modelled_by"], row["source"],
                      end_section=last)
    return table


def mechanisms_json() -> dict[str, list[dict[str, str]]]:
    """``{preset: [{mechanism, modelled_by, source, note}, ...]}`` for every preset."""
    out: dict[str, list[dict[str, str]]] = {name: [] for name in PRESETS}
    for row in mechanism_rows():
        out[row["preset"]].append({k: v for k, v in row.items() if k != "preset"})
    return out


@app.command("presets")
def presets(verbose: bool = typer.Option(False, "--verbose", "-v",
                                         help="Also print what each preset models."),
            as_json: bool = typer.Option(False, "--json",
                                         help="Print every preset's layers as JSON instead."),
            mechanisms: bool = typer.Option(
                False, "--mechanisms",
                help="Print the parity table instead: each preset's mechanisms with sources.")
            ) -> None:
    """The presets: the 13 of the spec, the continuum and autellix peers and saga_kvmove."""
    if mechanisms:
        if as_json:
            typer.echo(json.dumps(mechanisms_json(), indent=2))
        else:
            print_table(mechanisms_table())
        return
    if as_json:
        typer.echo(json.dumps(presets_json(), indent=2))
        return
    print_table(presets_table())
    if verbose:
        for preset in PRESETS.values():
            console.print(f"[bold]{preset.name}[/]: {preset.description}")


def spec_table() -> Table:
    """The reference deployment's capacities, each computed from the model and cluster facts."""
    r = check_reference_invariants()
    table = Table(title=f"Reference deployment: {r.model} on {r.cluster_gpus} GPUs (computed)",
                  title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("KV bytes per token", f"{r.kv_bytes_per_token:,} B"),
        ("KV bytes per 16-token block", f"{r.kv_bytes_per_block:,} B"),
        (f"KV of one {r.session_tokens:,}-token session",
         f"{r.session_kv_bytes / GB:.1f} GB ({r.session_kv_bytes / GiB:.1f} GiB)"),
        ("weights", f"{r.weight_bytes / GB:.1f} GB"),
        ("HBM left for KV per instance", f"{r.kv_hbm_bytes_per_instance / GB:.1f} GB"),
        ("KV blocks per instance", f"{r.kv_blocks_per_instance:,}"),
        ("32K sessions per instance / cluster",
         f"{r.sessions_per_instance} / {r.sessions_per_cluster}"),
        ("DRAM KV blocks per node", f"{r.dram_blocks_per_node:,}"),
        ("PCIe swap of one session", f"{r.pcie_swap_s_per_session * 1e3:.0f} ms"),
        ("InfiniBand transfer of one session", f"{r.ib_transfer_s_per_session * 1e3:.0f} ms"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


@app.command("spec")
def spec() -> None:
    """The reference deployment (Llama-3-70B, 16 x TP4 on 64 A100-80GB), computed."""
    print_table(spec_table())


@app.command("native")
def native() -> None:
    """Which kernels run native (C++/OpenMP), which on CUDA, which fall back to NumPy, and why."""
    from saga.cli.kernels import native_table

    print_table(native_table())
