"""saga-integrations: agent-framework adapters that feed SAGA the workflow.

LangChain, AutoGen and CrewAI already know an agent's structure — which tool runs next, how
long it took, which agent this is. The adapters turn what each framework reports into
saga-aeg's observed steps and `WorkflowHint`s (through a `WorkflowFeed` into
`PatternInference`) and into the per-request metadata SAGA's engine schedules by. Importing
this package (or any adapter module) needs no framework; each adapter's ``attach()`` does, and
says which extra to install when it is missing.
"""

from saga.aeg.hints import WorkflowHint
from saga.integrations.errors import FrameworkNotInstalledError, IntegrationError
from saga.integrations.feed import WorkflowFeed
from saga.integrations.frameworks import FRAMEWORKS, FrameworkStatus, framework_status, require
from saga.integrations.metadata import RequestMetadata
from saga.integrations.session import LLMCall, SessionTrace, ToolCall, estimate_tokens

__all__ = [
    "FRAMEWORKS",
    "FrameworkNotInstalledError",
    "FrameworkStatus",
    "IntegrationError",
    "LLMCall",
    "RequestMetadata",
    "SessionTrace",
    "ToolCall",
    "WorkflowFeed",
    "WorkflowHint",
    "estimate_tokens",
    "framework_status",
    "require",
]
