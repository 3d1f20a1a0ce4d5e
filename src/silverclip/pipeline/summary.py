"""The run report: one Markdown page with the headline numbers and links to every detailed report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from silverclip.io import atomic_write_json, atomic_write_text


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def headline_lines(summary: dict[str, Any]) -> list[str]:
    """The few numbers a user wants first (also printed at the end of ``silverclip run``)."""
    ev = summary["evaluation"]
    zs, rt = ev["zero_shot"], ev["retrieval"]
    ci = zs.get("auc_ci")
    ci_txt = f" (95% CI {_f(ci[0])}-{_f(ci[1])})" if ci else ""
    n_f = zs.get("n_findings")
    over = f" over {n_f} estimable findings" if n_f is not None else ""
    prompts = f" (`{zs['template_set']}` prompts)" if zs.get("template_set") else ""
    lines = [
        f"zero-shot mean AUC{prompts} {_f(zs.get('auc'))}{ci_txt}{over}, F1 {_f(zs.get('f1'))} "
        f"on {zs.get('n_volumes')} volumes"
    ]
    for name, other in (zs.get("other_template_sets") or {}).items():
        oci = other.get("auc_ci")
        lines.append(
            f"zero-shot mean AUC (`{name}` prompts) {_f(other.get('auc'))}"
            + (f" (95% CI {_f(oci[0])}-{_f(oci[1])})" if oci else "")
        )
    if zs.get("not_estimable"):
        lines.append("not estimable (too few positives, not averaged): " + ", ".join(zs["not_estimable"]))
    excl = rt.get("map_exclude")
    excl_txt = (
        f" (excluded from its own results: {excl})" if excl and excl != "none" else " (query may retrieve itself)"
    )
    gal = f" (gallery {rt['map_gallery']} volumes)" if rt.get("map_gallery") else ""
    lines.append("image-to-image MAP@K " + ", ".join(f"@{k} {_f(v)}" for k, v in rt["map"].items()) + gal + excl_txt)
    if "report_to_image" in rt:
        n_gal = rt.get("report_to_image_gallery")
        lines.append(
            "report-to-image Recall@K "
            + ", ".join(
                f"@{k} {_f(v)}" + (f" (chance {min(1.0, int(k) / n_gal):.3f})" if n_gal else "")
                for k, v in rt["report_to_image"].items()
            )
            + (f", gallery {n_gal} volumes" if n_gal else "")
        )
    pg = summary.get("pointing_game") or {}
    if pg.get("hit_rate") is not None:
        lines.append(
            f"pointing game (saliency peak inside the lesion mask): {100 * pg['hit_rate']:.1f}% of {pg['n_trials']} "
            f"finding-volume pairs on {pg['n_volumes']} validation volumes (chance {100 * pg['chance']:.1f}%)"
        )
    q = summary.get("labels", {}).get("quality")
    if q:
        lines.append(
            f"silver labels ({summary['labels'].get('backend')}) vs gold: macro AUC {_f(q.get('auc'))}, "
            f"macro F1 {_f(q.get('f1'))}"
        )
    return lines


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``<run>/report.md`` and ``<run>/summary.json``; return the Markdown path."""
    run_dir = Path(run_dir)
    ev_dir = Path(summary["evaluation"]["dir"])
    md = [f"# silverclip run: {run_dir.name}", "", "## Headline", ""]
    md += [f"- {line}" for line in headline_lines(summary)]
    md += ["", "## Details", ""]
    links = [
        ("Everything on one page (self-contained HTML)", run_dir / "report.html"),
        ("Zero-shot per finding, ROC curves", ev_dir / "zero_shot" / "zero_shot.md"),
        ("Retrieval, with example queries", ev_dir / "retrieval" / "retrieval.md"),
    ]
    backend = summary.get("labels", {}).get("backend")
    if backend and backend != "gold":
        links.append((f"Silver label quality ({backend})", run_dir / "labels" / f"quality_{backend}.md"))
    for title, path in links:
        if path.is_file() or path.name == "report.html":  # report.html is written right after this file
            md.append(f"- [{title}]({path.relative_to(run_dir)})")
    md.append("")
    data = summary["data"]
    md.append(f"Data: {data.get('n_train')} training and {data.get('n_valid')} validation volumes.")
    atomic_write_json(run_dir / "summary.json", summary)
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(md) + "\n")
    return out
