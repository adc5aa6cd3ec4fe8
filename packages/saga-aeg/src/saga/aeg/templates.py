"""Built-in AEG templates of the two agent workloads of the paper.

Both use the inference naming scheme (`saga.aeg.steps`), so an AEG inferred from tasks sampled
from a template has the template's nodes. Each figure says where it comes from; where no
measurement exists the figure is an assumption and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from saga.aeg.errors import AEGError
from saga.aeg.graph import AEG, Edge, LLMNode, Node, TerminalNode, ToolNode
from saga.aeg.hints import WorkflowHint, hint_aeg
from saga.aeg.latency import LogNormalLatency
from saga.aeg.steps import END_NODE_ID, START_LLM_NODE_ID, tool_node_id

__all__ = ["TEMPLATES", "generic_agent", "swe_bench_agent", "template", "webarena_agent"]


def _llm_after(tool: str) -> str:
    return "llm@" + tool_node_id(tool)


def _tool_loop(
    agent_type: str,
    llm_tokens: Mapping[str, tuple[float, float]],
    latencies: Mapping[str, LogNormalLatency],
    choices: Mapping[str, Mapping[str, float]],
    final_tools: Mapping[str, str] | None = None,
) -> AEG:
    """Build an LLM→tool→LLM loop.

    `llm_tokens[key] = (prompt growth, output)` and `choices[key] = {tool or "end": weight}` for
    key "start" (first call) or a tool name (the call after that tool); weights are
    renormalised so rounded published shares can be written as they are. Every tool leads to
    the LLM call after it, except `final_tools` (tool → terminal id), which end the task.
    """
    final_tools = dict(final_tools or {})

    def llm_id(key: str) -> str:
        return START_LLM_NODE_ID if key == "start" else _llm_after(key)

    nodes: list[Node] = []
    edges: list[Edge] = []
    for key, (prompt, output) in llm_tokens.items():
        nodes.append(LLMNode(llm_id(key), prompt, output))
        row = choices[key]
        total = math.fsum(row.values())
        for dst, w in row.items():
            dst_id = END_NODE_ID if dst == "end" else tool_node_id(dst)
            edges.append(Edge(llm_id(key), dst_id, w / total))
    for tool, lat in latencies.items():
        nodes.append(ToolNode(tool_node_id(tool), tool, lat))
        edges.append(Edge(tool_node_id(tool), final_tools.get(tool, llm_id(tool)), 1.0))
    nodes.append(TerminalNode(END_NODE_ID))
    return AEG(agent_type, nodes, edges, START_LLM_NODE_ID)


# Shares of the next command after each node of `swe_bench_agent`, from the trace (rounded to
# 0.001; the docstring there says which trace and how commands are grouped).
_SWE_BENCH_SHARES: Mapping[str, Mapping[str, float]] = {
    "start": {"search": 1.0},
    "search": {
        "search": 0.528,
        "edit": 0.299,
        "python": 0.061,
        "test": 0.048,
        "format_error": 0.037,
        "submit": 0.027,
    },
    "edit": {
        "search": 0.215,
        "edit": 0.283,
        "python": 0.391,
        "test": 0.052,
        "format_error": 0.026,
        "submit": 0.034,
    },
    "python": {
        "search": 0.323,
        "edit": 0.450,
        "python": 0.155,
        "test": 0.024,
        "format_error": 0.043,
        "submit": 0.005,
    },
    "test": {
        "search": 0.324,
        "edit": 0.380,
        "python": 0.040,
        "test": 0.199,
        "format_error": 0.010,
        "submit": 0.048,
    },
    "format_error": {
        "search": 0.235,
        "edit": 0.617,
        "python": 0.056,
        "test": 0.003,
        "format_error": 0.088,
        "submit": 0.001,
    },
}


def swe_bench_agent(agent_type: str = "swe-bench") -> AEG:
    """A SWE-bench agent (mini-swe-agent style): ~40 LLM calls, one shell command after each.

    Structure, transition shares and token figures are measured on the real trace in
    /work/shared/data/agent_traces (500 SWE-bench Verified sessions of mini-swe-agent 1.15.0
    with Gemini 3 Pro, 20,163 LLM calls, 40.3 calls per task on average), with the command
    verbs grouped as: search = grep/find/ls/cat/nl/head/tail/git; edit = sed/write_file/rm/
    mkdir/cp/mv/touch; python = python/pip/bash/make and the rare rest; test = pytest/
    runtests.py/bin/test; format_error = a reply without exactly one bash block (no command
    runs); submit = the final `echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff`, which
    ends the task. The first call always searches. LLM nodes carry the trace's mean prompt
    growth (prompt minus previous prompt and output; the first call: the whole prompt, 1,840
    mean / 1,647 median) and mean output tokens.

    Tool latencies are **assumptions**: the trace does not record durations. Shell reads and
    edits in a warm Docker container take a fraction of a second (`docker exec` overhead
    dominates); scripts seconds; a test run tens of seconds at its p95:
    search median 0.3 s (sigma 0.8, p95 1.1 s), edit 0.2 s (0.5), python 2 s (1.0, p95 10 s),
    test 12 s (0.9, p95 53 s), format_error 0.05 s (0.3), submit 0.5 s (0.5).
    """
    # (prompt growth, output) tokens, means over the trace's calls at each node.
    tokens = {
        "start": (1840.0, 209.0),
        "search": (472.0, 295.0),
        "edit": (123.0, 209.0),
        "python": (222.0, 382.0),
        "test": (740.0, 252.0),
        "format_error": (107.0, 220.0),
    }
    latencies = {
        "search": LogNormalLatency.from_median(0.3, 0.8),
        "edit": LogNormalLatency.from_median(0.2, 0.5),
        "python": LogNormalLatency.from_median(2.0, 1.0),
        "test": LogNormalLatency.from_median(12.0, 0.9),
        "format_error": LogNormalLatency.from_median(0.05, 0.3),
        "submit": LogNormalLatency.from_median(0.5, 0.5),
    }
    return _tool_loop(agent_type, tokens, latencies, _SWE_BENCH_SHARES,
                      final_tools={"submit": END_NODE_ID})


def webarena_agent(agent_type: str = "webarena") -> AEG:
    """A WebArena browsing agent: ~15 LLM calls, one browser action after each.

    No WebArena trace is available here, so every figure is an **assumption**, anchored where
    possible: WebArena's reference `run.py` truncates each accessibility-tree observation to
    1,920 tokens (`--max_obs_length`), stops after 30 actions (`--max_steps`) and caps a reply
    at 384 tokens; its action space is click/type/hover/scroll/goto/go_back/stop. The agent
    is modelled keeping its history (as agents built on WebArena today do), so the prompt grows
    by about one observation per call: ~3,000 tokens first (system prompt with few-shot
    examples ~1.1K + first observation), then 1,200–1,800 per action; ~140 output tokens
    (reasoning + action). `stop` is an action the LLM emits, not a tool call, so the LLM node
    goes straight to `end`, with probability 0.07 per call after the first (≈ 15 calls per
    task, well under the 30-step cap).

    Browser latencies (Playwright against self-hosted sites, waiting for the page to settle):
    click median 0.9 s (sigma 0.6), type 0.6 s (0.5), goto 1.8 s (0.7), scroll 0.3 s (0.4),
    go_back 1.2 s (0.6): sub-second to a few seconds.
    """
    tokens = {
        "start": (3000.0, 140.0),
        "click": (1700.0, 140.0),
        "type": (1400.0, 140.0),
        "goto": (1800.0, 140.0),
        "scroll": (1200.0, 140.0),
        "go_back": (1700.0, 140.0),
    }
    shares: dict[str, dict[str, float]] = {
        "start": {"goto": 0.25, "click": 0.55, "type": 0.15, "scroll": 0.05},
        "click": {
            "click": 0.45,
            "type": 0.20,
            "goto": 0.06,
            "scroll": 0.12,
            "go_back": 0.10,
            "end": 0.07,
        },
        "type": {
            "click": 0.60,
            "type": 0.10,
            "goto": 0.04,
            "scroll": 0.08,
            "go_back": 0.11,
            "end": 0.07,
        },
        "goto": {
            "click": 0.55,
            "type": 0.20,
            "goto": 0.03,
            "scroll": 0.10,
            "go_back": 0.05,
            "end": 0.07,
        },
        "scroll": {
            "click": 0.55,
            "type": 0.10,
            "goto": 0.05,
            "scroll": 0.18,
            "go_back": 0.05,
            "end": 0.07,
        },
        "go_back": {
            "click": 0.60,
            "type": 0.10,
            "goto": 0.08,
            "scroll": 0.10,
            "go_back": 0.05,
            "end": 0.07,
        },
    }
    latencies = {
        "click": LogNormalLatency.from_median(0.9, 0.6),
        "type": LogNormalLatency.from_median(0.6, 0.5),
        "goto": LogNormalLatency.from_median(1.8, 0.7),
        "scroll": LogNormalLatency.from_median(0.3, 0.4),
        "go_back": LogNormalLatency.from_median(1.2, 0.6),
    }
    return _tool_loop(agent_type, tokens, latencies, shares)


def generic_agent(
    agent_type: str = "generic",
    expected_llm_calls: float = 20.0,
    tools: tuple[str, ...] = (),
) -> AEG:
    """A loop with `expected_llm_calls` calls on average over `tools` (see `hint_aeg`)."""
    return hint_aeg(WorkflowHint(agent_type, tools=tools, expected_llm_calls=expected_llm_calls))


TEMPLATES: dict[str, Callable[[str], AEG]] = {
    "swe-bench": swe_bench_agent,
    "webarena": webarena_agent,
    "generic": generic_agent,
}
"""Template builders by name (each takes the agent type as its first argument)."""


def template(name: str, agent_type: str | None = None) -> AEG:
    """The built-in template `name` ("swe-bench", "webarena" or "generic")."""
    try:
        build = TEMPLATES[name]
    except KeyError:
        raise AEGError(
            f"unknown AEG template {name!r}; choose one of {sorted(TEMPLATES)}"
        ) from None
    return build(agent_type or name)
