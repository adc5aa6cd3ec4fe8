"""Structural checks of an AEG: the rules its constructor enforces before any prediction.

Kept apart from :mod:`saga.aeg.graph` (the closed-form predictions) so each module holds one
idea; :class:`saga.aeg.graph.AEG` calls :func:`check_graph` on construction.
"""

from __future__ import annotations

import math
from collections import deque

from saga.aeg.errors import AEGError
from saga.aeg.nodes import (
    PROBABILITY_TOLERANCE,
    Edge,
    LLMNode,
    Node,
    ParallelNode,
    TerminalNode,
    ToolNode,
)

__all__ = ["check_graph"]

Successors = dict[str, tuple[tuple[str, float], ...]]


def check_graph(
    nodes: tuple[Node, ...], edges: tuple[Edge, ...], start: object, where: str
) -> tuple[dict[str, int], Successors]:
    """``(node id -> position, node id -> (successor, probability) pairs)`` of a valid graph.

    Raises `AEGError` naming the node for: duplicate or unknown node ids, a missing start,
    negative probabilities, outgoing probabilities not summing to 1, a terminal with outgoing
    edges, a non-terminal without any, or a node with no path to a terminal.
    """
    index: dict[str, int] = {}
    for node in nodes:
        if not isinstance(node, LLMNode | ToolNode | ParallelNode | TerminalNode):
            raise AEGError(
                f"{where}: nodes must be LLMNode, ToolNode, ParallelNode or TerminalNode, "
                f"got {type(node).__name__}"
            )
        if node.id in index:
            raise AEGError(f"{where}: duplicate node id '{node.id}'; ids must be unique")
        index[node.id] = len(index)
    if not isinstance(start, str) or start not in index:
        raise AEGError(
            f"{where}: start node {start!r} is missing; add it to nodes "
            f"or set start to one of {sorted(index)}"
        )
    succ: dict[str, list[tuple[str, float]]] = {nid: [] for nid in index}
    for edge in edges:
        if not isinstance(edge, Edge):
            raise AEGError(f"{where}: edges must be Edge objects, got {type(edge).__name__}")
        for end in (edge.src, edge.dst):
            if end not in index:
                raise AEGError(
                    f"{where}: edge {edge.src}->{edge.dst} names unknown node "
                    f"'{end}'; add the node or fix the edge"
                )
        if any(dst == edge.dst for dst, _ in succ[edge.src]):
            raise AEGError(f"{where}: duplicate edge {edge.src}->{edge.dst}; merge them")
        succ[edge.src].append((edge.dst, float(edge.p)))
    for node in nodes:
        out = succ[node.id]
        if isinstance(node, TerminalNode):
            if out:
                raise AEGError(
                    f"{where}: terminal node '{node.id}' has outgoing edges "
                    f"(to {[d for d, _ in out]}); terminals end the task"
                )
            continue
        if not out:
            raise AEGError(
                f"{where}: node '{node.id}' has no outgoing edges; add one "
                "(e.g. to a terminal node) or make it a TerminalNode"
            )
        total = math.fsum(p for _, p in out)
        if abs(total - 1.0) > PROBABILITY_TOLERANCE:
            raise AEGError(
                f"{where}: outgoing probabilities of node '{node.id}' sum to "
                f"{total!r}, not 1; renormalise them"
            )
    _check_exits(nodes, succ, where)
    return index, {k: tuple(v) for k, v in succ.items()}


def _check_exits(
    nodes: tuple[Node, ...], succ: dict[str, list[tuple[str, float]]], where: str
) -> None:
    """Every node must reach a terminal via positive-probability edges (reverse BFS)."""
    preds: dict[str, list[str]] = {n.id: [] for n in nodes}
    for src, out in succ.items():
        for dst, p in out:
            if p > 0.0:
                preds[dst].append(src)
    seen = {n.id for n in nodes if isinstance(n, TerminalNode)}
    queue = deque(seen)
    while queue:
        for src in preds[queue.popleft()]:
            if src not in seen:
                seen.add(src)
                queue.append(src)
    stuck = [n.id for n in nodes if n.id not in seen]
    if stuck:
        raise AEGError(
            f"{where}: no terminal node is reachable from node '{stuck[0]}' "
            f"(stuck: {stuck}); a cycle needs an exit edge of positive probability"
        )
