"""Render the output of metrics.score_documents as a Markdown table or a bar chart."""

from __future__ import annotations

from pathlib import Path

from metatune.metrics import MATCHINGS


def _ordered_fields(metrics: dict) -> list[str]:
    # first_author goes after the real fields, whatever its position in the dict
    fields = [f for f in metrics["fields"] if f != "first_author"]
    return fields + (["first_author"] if "first_author" in metrics["fields"] else [])


def markdown_table(metrics: dict, matchings=MATCHINGS) -> str:
    """F1 (%) per field and matching, plus support; micro and macro rows at the end."""
    rows = [(f, metrics["fields"][f]) for f in _ordered_fields(metrics)]
    rows += [("**micro**", metrics["micro"]), ("**macro**", metrics["macro"])]
    if chosen := metrics.get("micro_chosen"):
        rows.append((f"**micro ({', '.join(chosen['fields'])})**", chosen))
    lines = [
        "| field | " + " | ".join(matchings) + " | support |",
        "|---|" + "---:|" * (len(matchings) + 1),
    ]
    for name, scores in rows:
        cells = [f"{scores[m]['f1'] * 100:.1f}" for m in matchings]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {scores[matchings[0]]['support']} |")
    return "\n".join(lines) + "\n"


def catalogue_form_lines(metrics: dict) -> str:
    """Names and dates written as the reference writes them, of those that soft-match it."""
    return "".join(
        f"{kind} in the reference's form: {form['same_form']} of {form['matched']} soft-matched "
        f"({form['rate'] * 100:.1f}%)\n"
        for kind, form in metrics.get("catalogue_form", {}).items()
    )


def bar_chart(metrics: dict, path, matching: str = "soft") -> Path:
    """Horizontal bar chart of per-field F1 under one matching, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = _ordered_fields(metrics)
    f1 = [metrics["fields"][f][matching]["f1"] * 100 for f in fields]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(fields) + 1.2))
    bars = ax.barh(fields, f1, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
    ax.invert_yaxis()  # keep the table's order, top to bottom
    ax.set_xlim(0, 105)
    ax.set_xlabel(f"F1 (%), {matching} matching")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
