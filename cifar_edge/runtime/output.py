"""Render `infer` results as an aligned table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from cifar_edge.runtime.infer import Prediction


def format_predictions(results: Sequence[Prediction], fmt: str, top_k: int) -> str:
    """All results in one string; failed files carry their error."""
    if fmt == "json":
        rows = [
            {"path": str(r.path), "error": r.error}
            if not r.ok
            else {"path": str(r.path), "label": r.top[0][0], "probability": round(r.top[0][1], 6),
                  "top": [{"label": c, "probability": round(p, 6)} for c, p in r.top]}
            for r in results
        ]
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["path"]
        for k in range(1, top_k + 1):
            header += [f"label_{k}", f"probability_{k}"]
        writer.writerow(header + ["error"])
        for r in results:
            row = [str(r.path)]
            for k in range(top_k):
                row += [r.top[k][0], f"{r.top[k][1]:.6f}"] if k < len(r.top) else ["", ""]
            writer.writerow(row + [r.error or ""])
        return buffer.getvalue()
    width = max([len(str(r.path)) for r in results] + [4])
    lines = [f"{'path':<{width}}  prediction"]
    for r in results:
        if r.ok:
            shown = ", ".join(f"{c} {p:.3f}" for c, p in r.top)
        else:
            shown = f"ERROR: {r.error}"
        lines.append(f"{str(r.path):<{width}}  {shown}")
    return "\n".join(lines) + "\n"
