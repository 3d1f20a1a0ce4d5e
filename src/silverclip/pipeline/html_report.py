"""``report.html``: one self-contained page per run (``silverclip run`` writes it, ``silverclip report RUN`` redoes it).

Everything comes from the run folder's files (no model is loaded, nothing is recomputed but plots): the
summary, ``eval/zero_shot`` (per-finding metrics with bootstrap intervals, thresholds, probabilities, ROC
curves), each training stage's ``metrics.jsonl``, the silver labels against the gold ones with the deciding
sentences (``labels/``), the preprocessed validation volumes (``cache/``, shown as maximum-intensity
projections), the validation embeddings (``embeddings/valid``, for retrieval examples) and the pointing game
(``eval/pointing``). Images are PNG ``data:`` URIs, the CSS is inline, there is no script and no external
resource: the file opens from disk anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from silverclip.io import atomic_write_text

SECTIONS = (
    ("headline", "Headline"),
    ("findings", "Per-finding zero-shot results"),
    ("roc", "ROC curves"),
    ("training", "Training curves"),
    ("labels", "Silver-label quality"),
    ("gallery", "Validation gallery"),
    ("retrieval", "Retrieval"),
    ("pointing", "Pointing game"),
)
GALLERY_SIZE = 12
N_IMAGE_QUERIES = 4
N_TEXT_QUERIES = 3
TOP_K = 5
MAX_DISAGREEMENTS = 25
MIP_WINDOW = (-1000.0, 1500.0)
SKIPPED_CURVES = {"step", "epoch", "time_s", "seconds", "volumes_per_s", "data_wait"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:1em 2em;color:#1d2733;background:#fff}
h1{border-bottom:3px solid #2b6cb0;padding-bottom:.3em}h2{margin-top:2em;border-bottom:1px solid #ccd}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccd;padding:.25em .6em;text-align:right}th{background:#edf2f7}
td:first-child,th:first-child{text-align:left}.wrong{background:#fed7d7}.right{background:#c6f6d5}
mark{background:#fefcbf;padding:0 .15em}.muted{color:#718096}.cards{display:flex;flex-wrap:wrap;gap:1em}
.card{border:1px solid #ccd;border-radius:6px;padding:.5em;width:360px}.card img{width:112px;height:112px;
image-rendering:pixelated;background:#000;margin-right:2px}.hits{display:flex;gap:.5em;flex-wrap:wrap}
.hit{font-size:.8em;width:120px}.hit img{width:112px;height:112px;image-rendering:pixelated;background:#000}
.report{font-size:.85em;background:#f7fafc;border-left:3px solid #a0aec0;padding:.4em .8em;white-space:pre-wrap}
ul.headline li{margin:.3em 0}
"""


# ------------------------------------------------------------------------------------------------ helpers
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fig_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return _png_uri(buf.getvalue())


def _img(uri: str, alt: str, attrs: str = "") -> str:
    return f'<img src="{uri}" alt="{_e(alt)}" {attrs}>'


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _gray_png(img: np.ndarray, window: tuple[float, float] = MIP_WINDOW) -> bytes:
    from PIL import Image

    lo, hi = window
    u8 = (np.clip((np.asarray(img, np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG")
    return buf.getvalue()


def mips(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal maximum-intensity projections of a canonical (RAS, x y z) volume, oriented
    for display (anterior / superior up, the patient's right on the viewer's left)."""
    v = np.asarray(volume)
    axial = np.flipud(v.max(axis=2).T)[:, ::-1]
    coronal = np.flipud(v.max(axis=1).T)[:, ::-1]
    sagittal = np.flipud(v.max(axis=0).T)
    return [axial, coronal, sagittal]


class _Thumbs:
    """MIP thumbnails of cached volumes, made once each."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self._done: dict[str, list[str]] = {}

    def get(self, volume_id: str) -> list[str]:
        if volume_id not in self._done:
            path = self.cache / "volumes" / f"{volume_id}.npy"
            try:
                vol = np.load(path, mmap_mode="r", allow_pickle=False)
                self._done[volume_id] = [_png_uri(_gray_png(m)) for m in mips(vol)]
            except (OSError, ValueError):
                self._done[volume_id] = []
        return self._done[volume_id]


# ------------------------------------------------------------------------------------------------ sections
def _headline(run: Path, summary: dict[str, Any] | None) -> str:
    from silverclip.pipeline.summary import headline_lines

    if not summary:
        return "<p class='muted'>No summary.json: the run has not finished its evaluation.</p>"
    items = "".join(f"<li>{_e(line)}</li>" for line in headline_lines(summary))
    data = summary.get("data", {})
    return (
        f"<ul class='headline'>{items}</ul><p>Data: {_e(data.get('n_train'))} training and "
        f"{_e(data.get('n_valid'))} validation volumes. Intervals are 95% scan-level bootstrap intervals.</p>"
    )


def _per_finding(zs: dict[str, Any] | None) -> str:
    if not zs:
        return "<p class='muted'>No zero-shot evaluation (eval/zero_shot/zero_shot.json).</p>"
    lower, upper = zs.get("bootstrap", {}).get("lower", {}), zs.get("bootstrap", {}).get("upper", {})

    def ci(name: str, metric: str) -> str:
        lo, hi = lower.get(f"{name}/{metric}"), upper.get(f"{name}/{metric}")
        return f" <span class='muted'>[{_num(lo)}, {_num(hi)}]</span>" if lo is not None and hi is not None else ""

    rows = []
    not_est = set(zs.get("not_estimable") or [])
    for name in zs["findings"]:
        m = zs["metrics"][name]
        tag = " <span class='muted'>(not estimable)</span>" if name in not_est else ""
        rows.append(
            f"<tr><td>{_e(name)}{tag}</td><td>{_num(m.get('auc'))}{ci(name, 'auc')}</td>"
            f"<td>{_num(m.get('f1'))}{ci(name, 'f1')}</td><td>{_num(m.get('threshold'), 4)}</td>"
            f"<td>{_num(int(m.get('n_pos', 0)))} / {_num(int(m.get('n', 0)))}</td></tr>"
        )
    mean = zs["metrics"].get("mean", {})
    rows.append(
        f"<tr><th>mean (estimable)</th><th>{_num(mean.get('auc'))}{ci('mean', 'auc')}</th>"
        f"<th>{_num(mean.get('f1'))}{ci('mean', 'f1')}</th><th></th><th></th></tr>"
    )
    return (
        f"<p>Template set <code>{_e(zs.get('template_set'))}</code>, mode {_e(zs.get('mode'))}; thresholds: "
        f"{_e(zs.get('threshold_source'))}.</p><table><tr><th>finding</th><th>AUC [95% CI]</th>"
        f"<th>F1 [95% CI]</th><th>threshold</th><th>positives / volumes</th></tr>{''.join(rows)}</table>"
    )


def _roc(run: Path) -> str:
    png = run / "eval" / "zero_shot" / "roc_curves.png"
    if not png.is_file():
        return "<p class='muted'>No ROC curves (eval/zero_shot/roc_curves.png).</p>"
    return _img(_png_uri(png.read_bytes()), "ROC curves per finding", "style='max-width:100%'")


def training_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _training(run: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = []
    for stage in ("pretrain", "clip"):
        recs = training_records(run / stage / "metrics.jsonl")
        if not recs:
            continue
        train = [r for r in recs if r.get("kind") == "train"]
        val = [r for r in recs if r.get("kind") == "val"]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3))
        for key, ax in (("loss", axes[0]), ("lr", axes[1])):
            pts = [(r["step"], r[key]) for r in train if isinstance(r.get(key), (int, float))]
            if pts:  # a marker where there are few points: one point on a bare line draws nothing
                ax.plot(*zip(*pts), lw=1, marker="o" if len(pts) < 20 else None, ms=3)
            else:
                ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_title(f"{stage}: training {key}")
            ax.set_xlabel("step")
        keys = sorted(
            {k for r in val for k, v in r.items() if isinstance(v, (int, float)) and "/" not in k} - SKIPPED_CURVES
        )
        for k in keys[:6]:
            pts = [(r["epoch"], r[k]) for r in val if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            if pts:
                axes[2].plot(*zip(*pts), marker="o", ms=3, lw=1, label=k)
        axes[2].set_title(f"{stage}: validation per epoch")
        axes[2].set_xlabel("epoch")
        if keys:
            axes[2].legend(fontsize=7)
        fig.tight_layout()
        parts.append(f"<h3>{_e(stage)}</h3>" + _img(_fig_uri(fig), f"{stage} training curves", "style='width:100%'"))
    return "".join(parts) or "<p class='muted'>No training metrics (pretrain/ or clip/ metrics.jsonl).</p>"


def _highlight(text: str, sentences: Sequence[str]) -> str:
    out = _e(text)
    for s in sorted({s for s in sentences if s.strip()}, key=len, reverse=True):
        es = _e(s)
        out = out.replace(es, f"<mark>{es}</mark>") if es in out else out
    return out


def _labels(run: Path, summary: dict[str, Any] | None) -> str:
    backend = (summary or {}).get("labels", {}).get("backend")
    if not backend:
        cands = sorted((run / "labels").glob("quality_*.json"))
        backend = cands[0].stem[len("quality_") :] if cands else None
    if not backend or backend == "gold":
        return "<p class='muted'>Trained on gold labels: no silver labels to judge.</p>"
    quality = _read_json(run / "labels" / f"quality_{backend}.json")
    parts = []
    if quality:
        rows = []
        for name, m in (quality.get("per_finding") or {}).items():
            cells = "".join(f"<td>{_num(m.get(k))}</td>" for k in ("auc", "f1", "precision", "recall"))
            rows.append(f"<tr><td>{_e(name)}</td>{cells}<td>{_num(m.get('n_positive'))} / {_num(m.get('n'))}</td></tr>")
        macro = quality.get("macro", {})
        parts.append(
            f"<p>Silver labels ({_e(backend)}) against the reference (gold) labels of the "
            f"{_e(quality.get('n_reports'))} training reports: macro F1 {_num(macro.get('f1'))}, macro AUC "
            f"{_num(macro.get('auc'))}.</p><table class='quality'><tr><th>finding</th><th>AUC</th><th>F1</th>"
            f"<th>precision</th><th>recall</th><th>positives / reports</th></tr>{''.join(rows)}</table>"
        )
    parts.append(_disagreements(run, backend))
    return "".join(parts)


def _disagreements(run: Path, backend: str) -> str:
    from silverclip.labels.compare import disagreements, evidence_path, read_evidence
    from silverclip.labels.table import read_labels

    silver_csv = run / "labels" / f"silver_{backend}_train.csv"
    gold_csv = run / "labels" / "gold_train.csv"
    manifest = run / "manifests" / "train.csv"
    if not (silver_csv.is_file() and gold_csv.is_file() and manifest.is_file()):
        return "<p class='muted'>No silver/gold label files to compare.</p>"
    from silverclip.data.manifest import read_manifest

    reports = {}
    for row in read_manifest(manifest).itertuples(index=False):
        parts = [str(p) for p in (row.findings, row.impressions) if isinstance(p, str) and p.strip()]
        reports[str(row.volume_id)] = "\n\n".join(parts)
    silver = read_labels(silver_csv).dropna()
    gold = read_labels(gold_csv)
    ev_file = evidence_path(silver_csv)
    evidence = read_evidence(ev_file) if ev_file.is_file() else None
    common = silver.index.intersection(gold.index)
    df = disagreements(silver.loc[common], gold.loc[common], reports=reports, evidence_a=evidence)
    if not len(df):
        return "<p>No disagreement between silver and gold labels.</p>"
    counts = df.groupby("finding", sort=False).size()
    head = "".join(f"<tr><td>{_e(f)}</td><td>{n}</td></tr>" for f, n in counts.items())
    items = []
    for r in df.head(MAX_DISAGREEMENTS).itertuples(index=False):
        sentences = [s for s in str(r.evidence_a or "").split(" | ") if s]
        text = reports.get(str(r.id), "")
        items.append(
            f"<li><b>{_e(r.id)}</b> - {_e(r.finding)}: silver {_e(r.label_a)}, gold {_e(r.label_b)}; deciding "
            f"sentence{'s' if len(sentences) != 1 else ''}: {_e(' | '.join(sentences) or '(none)')}"
            f"<div class='report'>{_highlight(text, sentences)}</div></li>"
        )
    more = f"<p class='muted'>first {MAX_DISAGREEMENTS} of {len(df)} shown</p>" if len(df) > MAX_DISAGREEMENTS else ""
    return (
        f"<h3>Disagreements ({len(df)} report-finding pairs)</h3><table><tr><th>finding</th><th>disagreements</th>"
        f"</tr>{head}</table><ol class='disagreements'>{''.join(items)}</ol>{more}"
    )


def _validation_table(run: Path, zs: dict[str, Any] | None) -> tuple[pd.DataFrame, pd.DataFrame, dict] | None:
    from silverclip.labels.table import read_labels

    probs_csv = run / "eval" / "zero_shot" / "probabilities.csv"
    gold_csv = run / "labels" / "gold_valid.csv"
    if not (zs and probs_csv.is_file() and gold_csv.is_file()):
        return None
    probs = pd.read_csv(probs_csv).set_index("volume_id")
    probs.index = probs.index.astype(str)
    gold = read_labels(gold_csv)
    names = [n for n in zs["findings"] if n in probs.columns and n in gold.columns]
    common = [i for i in probs.index if i in gold.index]
    thresholds = {n: float(zs["metrics"][n].get("threshold", 0.5)) for n in names}
    return probs.loc[common, names], gold.loc[common, names], thresholds


def confident_errors(probs: pd.DataFrame, gold: pd.DataFrame, thresholds: dict[str, float]) -> pd.Series:
    """Per volume, the margin of its most confident error (how far P lies past the threshold on the wrong
    side, 0 when every labelled finding is right), highest first."""
    margins = {}
    for vid in probs.index:
        worst = 0.0
        for f, t in thresholds.items():
            y, p = gold.at[vid, f], probs.at[vid, f]
            if not np.isfinite(y):
                continue
            if y == 0 and p >= t:
                worst = max(worst, p - t)
            elif y == 1 and p < t:
                worst = max(worst, t - p)
        margins[vid] = worst
    return pd.Series(margins).sort_values(ascending=False, kind="stable")


def _gallery(run: Path, zs: dict[str, Any] | None, thumbs: _Thumbs) -> str:
    table = _validation_table(run, zs)
    if table is None:
        return "<p class='muted'>No validation probabilities and labels.</p>"
    probs, gold, thresholds = table
    order = confident_errors(probs, gold, thresholds).head(GALLERY_SIZE)
    cards = []
    for vid, margin in order.items():
        rows = []
        for f in probs.columns:
            y, p = gold.at[vid, f], probs.at[vid, f]
            pred = p >= thresholds[f]
            if not (y == 1 or pred):
                continue
            ok = np.isfinite(y) and bool(y) == bool(pred)
            truth = "n/a" if not np.isfinite(y) else ("present" if y == 1 else "absent")
            rows.append(
                f"<tr class='{'right' if ok else 'wrong'}'><td>{_e(f)}</td><td>{p:.2f}</td><td>{truth}</td></tr>"
            )
        imgs = "".join(_img(u, f"{vid} {v}") for u, v in zip(thumbs.get(str(vid)), ("axial", "coronal", "sagittal")))
        label = f"most confident error: margin {margin:.4f}" if margin > 0 else "no error at the thresholds"
        cards.append(
            f"<div class='card'><b>{_e(vid)}</b> <span class='muted'>{label}</span><div>{imgs}</div>"
            "<table><tr><th>finding (present or predicted)</th><th>P</th><th>truth</th></tr>"
            f"{''.join(rows)}</table></div>"
        )
    return (
        "<p>Validation volumes, the most confident errors first; maximum-intensity projections (axial, coronal, "
        f"sagittal) of the preprocessed volume, HU window {MIP_WINDOW[0]:g} to {MIP_WINDOW[1]:g}. Rows: the findings "
        "the volume has or the model predicts at the thresholds (red: wrong).</p>"
        f"<div class='cards gallery'>{''.join(cards)}</div>"
    )


def _retrieval(run: Path, thumbs: _Thumbs) -> str:
    from silverclip.eval.embeddings import load_embeddings
    from silverclip.eval.retrieval import l2_normalize, scan_id
    from silverclip.labels.table import read_labels

    emb_dir = run / "embeddings" / "valid"
    gold_csv = run / "labels" / "gold_valid.csv"
    if not (emb_dir / "meta.json").is_file() or not gold_csv.is_file():
        return "<p class='muted'>No validation embeddings (embeddings/valid).</p>"
    emb = load_embeddings(emb_dir)
    gold = read_labels(gold_csv)
    ids = [str(i) for i in emb.image_ids]
    img = l2_normalize(np.asarray(emb.image, np.float32))

    def positives(vid: str) -> set[str]:
        if vid not in gold.index:
            return set()
        row = gold.loc[vid]
        return {f for f in gold.columns if row[f] == 1}

    def hit(vid: str, caption: str) -> str:
        pics = thumbs.get(vid)
        return f"<div class='hit'>{_img(pics[0], vid) if pics else ''}<br>{caption}</div>"

    parts = [
        "<h3>Image to image</h3><p>Query volume and its nearest validation volumes by cosine similarity "
        "(other reconstructions of the query's scan left out), with the findings they share.</p>"
    ]
    queries = sorted(ids, key=lambda v: (-len(positives(v)), v))[:N_IMAGE_QUERIES]
    for q in queries:
        qi = ids.index(q)
        sims = img @ img[qi]
        order = [j for j in np.argsort(-sims, kind="stable") if scan_id(ids[j]) != scan_id(q)][:TOP_K]
        qpos = positives(q)
        hits = [hit(q, f"<b>query {_e(q)}</b><br>{_e(', '.join(sorted(qpos)) or 'no finding')}")]
        for rank, j in enumerate(order, 1):
            shared = sorted(qpos & positives(ids[j]))
            hits.append(
                hit(ids[j], f"#{rank} {_e(ids[j])} ({sims[j]:.2f})<br>shared: {_e(', '.join(shared) or 'none')}")
            )
        parts.append(f"<div class='hits i2i'>{''.join(hits)}</div>")
    if emb.text is not None and len(emb.text_ids):
        manifest = run / "manifests" / "valid.csv"
        texts = {}
        if manifest.is_file():
            from silverclip.data.manifest import read_manifest

            for row in read_manifest(manifest).itertuples(index=False):
                texts[str(row.volume_id)] = str(row.findings) if isinstance(row.findings, str) else ""
        txt = l2_normalize(np.asarray(emb.text, np.float32))
        parts.append(
            "<h3>Report to image</h3><p>Query report and the validation volumes closest to it (the "
            "report's own volume in bold).</p>"
        )
        text_ids = [str(t) for t in emb.text_ids]
        for t in sorted(text_ids, key=lambda v: (-len(positives(v)), v))[:N_TEXT_QUERIES]:
            sims = img @ txt[text_ids.index(t)]
            order = np.argsort(-sims, kind="stable")[:TOP_K]
            hits = []
            for rank, j in enumerate(order, 1):
                name = f"<b>{_e(ids[j])}</b>" if scan_id(ids[j]) == scan_id(t) else _e(ids[j])
                hits.append(hit(ids[j], f"#{rank} {name} ({sims[j]:.2f})"))
            parts.append(
                f"<p><b>{_e(t)}</b></p><div class='report'>{_e(texts.get(t, '')[:600])}</div>"
                f"<div class='hits r2i'>{''.join(hits)}</div>"
            )
    return "".join(parts)


def _pointing(run: Path) -> str:
    res = _read_json(run / "eval" / "pointing" / "pointing_game.json")
    if not res:
        return (
            "<p class='muted'>No pointing game (it needs synthetic data with lesion masks: "
            "<code>silverclip evaluate pointing</code>).</p>"
        )

    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    rows = "".join(
        f"<tr><td>{_e(f)}</td><td>{r['hits']} / {r['n']}</td><td>{pct(r['hit_rate'])}</td>"
        f"<td>{pct(r['chance'])}</td></tr>"
        for f, r in res.get("per_finding", {}).items()
    )
    return (
        f"<p>How often the saliency peak of a finding the volume has lies inside that finding's lesion mask: "
        f"<b>{pct(res.get('hit_rate'))}</b> of {res.get('n_trials')} finding-volume pairs on "
        f"{res.get('n_volumes')} validation volumes; chance (a random voxel of the model's view) "
        f"{pct(res.get('chance'))}.</p><table><tr><th>finding</th><th>hits / n</th><th>hit rate</th>"
        f"<th>chance</th></tr>{rows}</table>"
    )


# ------------------------------------------------------------------------------------------------ page
def render_html_report(run_dir: str | Path) -> str:
    """The HTML text of a run folder's report."""
    run = Path(run_dir)
    summary = _read_json(run / "summary.json")
    ev_dir = Path((summary or {}).get("evaluation", {}).get("dir") or run / "eval")
    if not ev_dir.is_dir():
        ev_dir = run / "eval"
    zs = _read_json(ev_dir / "zero_shot" / "zero_shot.json")
    thumbs = _Thumbs(run / "cache")
    body = {
        "headline": _headline(run, summary),
        "findings": _per_finding(zs),
        "roc": _roc(run),
        "training": _training(run),
        "labels": _labels(run, summary),
        "gallery": _gallery(run, zs, thumbs),
        "retrieval": _retrieval(run, thumbs),
        "pointing": _pointing(run),
    }
    nav = "".join(f"<a href='#{k}'>{_e(t)}</a>" for k, t in SECTIONS)
    sections = "".join(f"<section id='{k}'><h2>{_e(t)}</h2>{body[k]}</section>" for k, t in SECTIONS)
    title = f"silverclip run: {run.resolve().name}"
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><h1>{_e(title)}</h1><nav>{nav}</nav>"
        f"{sections}</body></html>\n"
    )
    external = re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, flags=re.IGNORECASE)
    if external:  # a guard on this module, not on user data: the page must never reach the network
        raise RuntimeError(f"report.html would load an external resource: {external[:3]}")
    return page


def write_html_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``<run>/report.html`` (or ``out``) atomically and return its path."""
    run = Path(run_dir)
    path = Path(out) if out else run / "report.html"
    atomic_write_text(path, render_html_report(run))
    return path
