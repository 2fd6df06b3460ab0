"""Operations, multiply-accumulates and parameters per layer (``stat``).

Counts are per image (batch 1), as the vendor's ``vai_p_caffe stat`` reports
them. ``total`` follows the vendor's totals (convolutions and BatchNorm for
Caffe, everything Darknet counts for Darknet); ``total_all`` adds every layer
we can count, InnerProduct included.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .graph import Graph
from .layers.registry import infer_shapes, spec_for


@dataclass
class LayerStat:
    index: int
    name: str
    type: str
    output: tuple
    ops: int
    macs: int
    params: int
    in_total: bool


@dataclass
class Totals:
    ops: int = 0
    macs: int = 0
    params: int = 0


@dataclass
class StatReport:
    framework: str
    layers: list[LayerStat] = field(default_factory=list)
    total: Totals = field(default_factory=Totals)
    total_all: Totals = field(default_factory=Totals)

    def to_json(self) -> dict:
        return {"framework": self.framework, "total": asdict(self.total),
                "total_all": asdict(self.total_all),
                "layers": [dict(asdict(l), output=list(l.output)) for l in self.layers]}


def stat(graph: Graph, input_shapes=None) -> StatReport:
    """Count every layer of ``graph`` for one image."""
    shapes = infer_shapes(graph, input_shapes, batch=1)
    report = StatReport(graph.framework)
    for i, layer in enumerate(graph.layers):
        spec = spec_for(graph.framework, layer, graph.source_text)
        c = spec.count(layer, shapes.inputs[layer.name], shapes.outputs[layer.name])
        out = shapes.outputs[layer.name][0] if shapes.outputs[layer.name] else ()
        report.layers.append(LayerStat(i, layer.name, layer.type, tuple(out), int(c.ops),
                                       int(c.macs), int(c.params), bool(c.in_total)))
        for tot, use in ((report.total, c.in_total), (report.total_all, True)):
            if use:
                tot.ops += int(c.ops)
                tot.macs += int(c.macs)
                tot.params += int(c.params)
    return report


def format_table(report: StatReport, all_layers: bool = False) -> str:
    """A fixed-width table of the counted layers and the totals."""
    darknet = report.framework == "darknet"
    head = f"{'#':>4} {'layer':<28} {'type':<16} {'output':<20} {'ops':>15} {'MACs':>15} {'params':>12}"
    if darknet:
        head += f" {'BFLOPs':>8}"
    lines = [head, "-" * len(head)]
    for l in report.layers:
        if not all_layers and not (l.ops or l.params):
            continue
        shape = "x".join(str(d) for d in l.output[1:]) if len(l.output) > 1 else str(l.output)
        mark = "" if l.in_total else " *"
        row = (f"{l.index:>4} {l.name[:28]:<28} {l.type[:16]:<16} {shape[:20]:<20} {l.ops:>15,} "
               f"{l.macs:>15,} {l.params:>12,}")
        if darknet:
            row += f" {l.ops / 1e9:>8.3f}"
        lines.append(row + mark)
    lines.append("-" * len(head))
    t, a = report.total, report.total_all
    lines.append(f"Total operations: {t.ops}")
    lines.append(f"Total MACs: {t.macs}")
    lines.append(f"Total params: {t.params}")
    if (a.ops, a.params) != (t.ops, t.params):
        lines.append(f"All layers (incl. * rows): ops {a.ops}, MACs {a.macs}, params {a.params}")
    if darknet:
        lines.append(f"Total BFLOPs: {t.ops / 1e9:.3f}")
    return "\n".join(lines)


def format_vendor(report: StatReport) -> str:
    """``vai_p_caffe stat`` style lines, as in the vendor's logs."""
    lines = []
    for l in report.layers:
        if not l.in_total or not (l.ops or l.params):
            continue
        if l.ops:
            lines.append(f"{l.type} layer {l.name} ops: {l.ops}")
        lines.append(f"{l.type} layer {l.name} params: {l.params}")
    lines.append(f"Total operations: {report.total.ops}")
    lines.append(f"Total params: {report.total.params}")
    return "\n".join(lines)
