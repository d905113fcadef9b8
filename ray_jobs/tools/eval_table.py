"""`echovideo eval`'s table and plot: clips grouped by a manifest column or setting, each group's scores
summarised (means, shares, Inception Distance), printed as a table and drawn as one panel per score."""

import json
import re
import statistics
from pathlib import Path

from echovideo.errors import EchoVideoInputError

PLOTTED_GROUPS = 8  # series a plot shows apart; more groups: the best by Identity Average, the rest pooled
# column -> (heading, how a group's value is computed from its clips' scores)
COLUMNS = {
    "identity_average": ("Identity Average", "mean"),
    "identity_variation": ("Identity Variation", "mean"),
    "face_share": ("Face share", "mean"),
    "dynamic": ("Dynamic Degree", "share"),
    "motion": ("Motion (px)", "mean"),
    "inception_distance": ("Inception Distance", "mean"),
    "facesim_arc": ("FaceSim-Arc", "mean"),  # --protocol consisid
    "facesim_cur": ("FaceSim-Cur", "mean"),  # --protocol consisid --curricularface
    "clip_score": ("CLIPScore", "mean"),  # --protocol consisid --clip
}
ECHOVIDEO_COLUMNS = ("identity_average", "identity_variation", "face_share", "dynamic", "motion", "inception_distance")
CONSISID_COLUMNS = ("facesim_arc", "facesim_cur", "inception_distance", "clip_score")
PLOTTED = {"echovideo": ("identity_average", "face_share", "motion"),
           "consisid": ("facesim_arc", "inception_distance")}
BOUNDED = ("identity_average", "face_share", "facesim_arc", "facesim_cur")  # shares and clamped similarities: 0..1


def group_of(clip: dict, by: str | None) -> str:
    if by is None:
        return "all"
    value = clip.get(by, clip["options"].get(by))
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def check_grouping(clips: list[dict], by: str | None) -> None:
    if by is None or any(by in clip or by in clip["options"] for clip in clips):
        return
    columns = sorted({k for clip in clips for k in clip if k not in ("options", "scores")})
    settings = sorted({k for clip in clips for k in clip["options"]})
    raise EchoVideoInputError("--by", f"{by!r} is neither a manifest column nor a generation setting",
                              f"use one of {columns + settings}")


def grouped(clips: list[dict], by: str | None) -> dict[str, list[dict]]:
    """Clips by group, the groups in natural order."""
    groups: dict[str, list[dict]] = {}
    for clip in clips:
        groups.setdefault(group_of(clip, by), []).append(clip)
    return {name: groups[name] for name in sorted(groups, key=_natural)}


def scored(clips: list[dict], column: str) -> list:
    """The column's value of every clip that has it."""
    return [c["scores"][column] for c in clips if c["scores"] and c["scores"].get(column) is not None]


def summarise(clips: list[dict], by: str | None, columns: tuple[str, ...] = ECHOVIDEO_COLUMNS) -> list[dict]:
    """One row per group: clip count and each column over the clips that have it (sorted by group)."""
    check_grouping(clips, by)
    table = []
    for name, members in grouped(clips, by).items():
        row = {"group": name, "clips": len(members)}
        for column in columns:
            how = COLUMNS[column][1]
            values = scored(members, column)
            if not values:
                continue
            row[column] = (sum(map(bool, values)) / len(values)) if how == "share" else statistics.fmean(values)
            row[f"{column}_clips"] = len(values)
        table.append(row)
    return table


def _natural(name: str):
    """Numbers in numeric order (0.1 before 0.15 before 1), then text."""
    try:
        return (0, float(name), "")
    except ValueError:
        return (1, 0.0, name)


def format_table(table: list[dict], by: str | None, columns: tuple[str, ...] = ECHOVIDEO_COLUMNS) -> str:
    shown = [c for c in columns if any(c in row for row in table)]
    headings = [by or "group", "clips"] + [COLUMNS[c][0] for c in shown]
    lines = [[row["group"], str(row["clips"])] + [f"{row[c]:.3f}" if c in row else "-" for c in shown] for row in table]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headings)]
    render = lambda cells: "  ".join(cell.rjust(width) for cell, width in zip(cells, widths))  # noqa: E731
    return "\n".join([render(headings), render(["-" * w for w in widths]), *map(render, lines)])


def output_names(by: str | None, protocol: str = "echovideo") -> tuple[str, str]:
    """(table, plot) file names: one pair per protocol and grouping, so `eval --by cache` never overwrites
    `eval`'s, nor ConsisID's numbers ours."""
    stem = "eval" if protocol == "echovideo" else f"eval-{protocol}"
    stem += "" if by is None else f"-by-{re.sub(r'[^A-Za-z0-9_.-]+', '_', by)}"
    return f"{stem}.json", f"{stem}.png"


def plotted_series(groups: dict[str, list[dict]], by: str | None,
                   rank_by: str = "identity_average") -> list[tuple[str, list[dict]]]:
    """(label, clips) per plotted series: every group while they fit a legend; beyond PLOTTED_GROUPS, the
    groups ranked by their mean `rank_by` score, the best PLOTTED_GROUPS - 1 apart and the rest pooled."""
    label = (lambda name: f"{by}={name}") if by else str
    if len(groups) <= PLOTTED_GROUPS:
        return [(label(name), members) for name, members in groups.items()]

    def rank(name: str) -> float:
        values = scored(groups[name], rank_by)
        return statistics.fmean(values) if values else float("-inf")

    ranked = sorted(groups, key=rank, reverse=True)
    best, rest = ranked[:PLOTTED_GROUPS - 1], ranked[PLOTTED_GROUPS - 1:]
    pooled = [clip for name in rest for clip in groups[name]]
    return [(label(name), groups[name]) for name in best] + [(f"{len(rest)} other groups", pooled)]


def write_plot(clips: list[dict], by: str | None, path: Path, columns: tuple[str, ...] = PLOTTED["echovideo"]) -> None:
    """Histograms of the scores per group (identity, face share, motion): where a mean hides a tail of bad
    clips."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(columns), figsize=(10, 3), dpi=100)
    series = plotted_series(grouped(clips, by), by, columns[0])
    for axis, column in zip(axes, columns):
        for label, members in series:
            if values := scored(members, column):
                bounded = {"range": (0, 1)} if column in BOUNDED else {}
                axis.hist(values, bins=20, alpha=0.5, label=label, histtype="step" if len(series) > 3 else "bar",
                          **bounded)
        axis.set_title(COLUMNS[column][0], fontsize=10)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
