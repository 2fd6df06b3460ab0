"""The pruning core: channel groups, importance criteria, plans and surgery.

Analysis (:func:`analyse`, criteria, :func:`make_plan`) never changes a graph;
:func:`apply` is the one step that does, and it returns a new graph.
"""
from .groups import ChannelAnalysis, Group, analyse

__all__ = ["ChannelAnalysis", "Group", "analyse"]
from .plan import GroupPlan, Plan, kept_count, make_plan, node_keep  # noqa: E402
from .surgery import apply, copy_graph  # noqa: E402

__all__ += ["GroupPlan", "Plan", "kept_count", "make_plan", "node_keep", "apply", "copy_graph"]
