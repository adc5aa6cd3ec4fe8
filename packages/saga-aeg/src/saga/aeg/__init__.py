"""saga-aeg: the Agent Execution Graph — a task's workflow as an absorbing Markov chain.

From it SAGA predicts which cached prefixes will be reused and how soon (`p_reuse`, steps and
time to the next LLM call) and how much work a task has left; a call that fans out to parallel
tool calls or sub-agents is one `ParallelNode` (what it says of the shared prefix:
`SharedPrefix`); tool latencies are log-normal, fitted online; AEGs are inferred per agent type
from observed tasks and seeded by framework hints.
It also holds what every other SAGA package shares: `SagaError`, the root of SAGA's typed errors,
and `RequestMetadata`, the per-request metadata schema adapters send and the engine reads.
"""

from saga.aeg.counts import TransitionCounts
from saga.aeg.errors import AEGError, SagaError
from saga.aeg.graph import AEG, Edge, LLMNode, Node, TerminalNode, ToolNode, p_reuse
from saga.aeg.hints import WorkflowHint, hint_aeg
from saga.aeg.inference import PatternInference, infer_aeg
from saga.aeg.latency import LogNormalLatency, ToolLatencyModel
from saga.aeg.metadata import MetadataError, RequestMetadata
from saga.aeg.parallel import Branch, ParallelNode, SharedPrefix
from saga.aeg.steps import (
    LLMStep,
    ParallelStep,
    Step,
    TaskStep,
    ToolStep,
    steps_from_trace_record,
)
from saga.aeg.templates import TEMPLATES, generic_agent, swe_bench_agent, template, webarena_agent

__all__ = [
    "AEG",
    "TEMPLATES",
    "AEGError",
    "Branch",
    "Edge",
    "LLMNode",
    "LLMStep",
    "LogNormalLatency",
    "MetadataError",
    "Node",
    "ParallelNode",
    "ParallelStep",
    "PatternInference",
    "RequestMetadata",
    "SagaError",
    "SharedPrefix",
    "Step",
    "TaskStep",
    "TerminalNode",
    "ToolLatencyModel",
    "ToolNode",
    "ToolStep",
    "TransitionCounts",
    "WorkflowHint",
    "generic_agent",
    "hint_aeg",
    "infer_aeg",
    "p_reuse",
    "steps_from_trace_record",
    "swe_bench_agent",
    "template",
    "webarena_agent",
]
