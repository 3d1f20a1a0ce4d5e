"""Zero-shot diagnosis from stored embeddings: prompt pairs, the text classifier, P(present).

The text side is encoded ONCE: :func:`build_zero_shot_classifier` returns a tensor (F, 2, E) (per
finding: the positive and negative prompt embedding, averaged over the template set's pairs). CT-CLIP
instead re-runs the image encoder for every finding's prompt pair (18 image passes per volume);
here one image embedding per volume is scored against all findings by a matrix product.

P(present) = softmax(logit_scale * [sim(img, pos), sim(img, neg)])[0] where sim is the model's own
similarity (dot product of its embeddings; cosine when the model normalises).

Evaluation modes (:func:`evaluate_zero_shot`):
- ``default``: thresholds chosen on a separate (validation) split by Youden's J (or F1), F1 of the
  positive class, scan-level bootstrap intervals;
- ``ctclip-compatible``: CT-CLIP's threshold rule applied to the test set itself, ``score > t``,
  class-weighted F1 (see :mod:`silverclip.eval.metrics`), plus intervals that do resample.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from silverclip.findings import load_findings

PromptPair = tuple[str, str]


@lru_cache(maxsize=1)
def _prompts_file() -> dict[str, Any]:
    return yaml.safe_load(resources.files("silverclip.resources").joinpath("prompts.yaml").read_text())


def list_template_sets() -> list[str]:
    return list(_prompts_file()["template_sets"])


def default_template_set() -> str:
    return str(_prompts_file()["default"])


def load_templates(name_or_path: str | Path | None = None) -> list[PromptPair]:
    """The prompt pairs of a built-in template set (by name) or of a YAML file ``{pairs: [[pos, neg], ...]}``."""
    name = name_or_path or default_template_set()
    sets = _prompts_file()["template_sets"]
    if str(name) in sets:
        pairs = sets[str(name)]["pairs"]
    else:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"unknown template set {name!r}: use one of {list(sets)} or a YAML file")
        pairs = (yaml.safe_load(path.read_text()) or {}).get("pairs")
        if not pairs:
            raise ValueError(f"{path}: expected a 'pairs' list of [positive, negative] templates")
    out = []
    for p in pairs:
        if len(p) != 2:
            raise ValueError(f"template pair {p!r} must hold exactly a positive and a negative prompt")
        out.append((str(p[0]), str(p[1])))
    return out


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def prompt_pairs(finding: str, templates: Sequence[PromptPair]) -> list[PromptPair]:
    """Fill the templates for one finding (a CT-RATE name, or any free-text finding).

    ``{name}`` is the CT-RATE name, ``{phrase}`` its prompt phrase; a template with ``{phrases}`` (or
    ``{Phrases}``, capitalised) gives one pair per phrase of the finding's ``phrases`` (findings.yaml). A
    free-text finding is its own name, phrase and only phrase.
    """
    known = {f.name: f for f in load_findings()}.get(finding)
    phrase = known.prompt if known else finding
    phrases = list(known.phrases) if known else [finding]
    out = []
    for pos, neg in templates:
        expand = any(k in pos + neg for k in ("{phrases}", "{Phrases}"))
        for ph in phrases if expand else [phrase]:
            kw = {"name": finding, "phrase": phrase, "Phrase": _capital(phrase), "phrases": ph, "Phrases": _capital(ph)}
            out.append((pos.format(**kw), neg.format(**kw)))
    return out


def logit_scale_of(model: torch.nn.Module) -> float:
    """The multiplier applied to similarities before the softmax.

    Models store the scale as a log (open_clip convention, learnable temperature): attribute
    ``logit_scale`` holds log(scale). A model may instead expose ``get_logit_scale()`` returning the
    multiplier itself, which takes precedence. Without either, 1.0.
    """
    getter = getattr(model, "get_logit_scale", None)
    if callable(getter):
        return float(torch.as_tensor(getter()).detach().float().item())
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        return 1.0
    return float(torch.as_tensor(scale).detach().float().exp().item())


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module, texts: Sequence[str], batch_size: int = 64, device: str | None = None
) -> torch.Tensor:
    """``model.encode_text(model.tokenize(texts))`` in batches -> (len(texts), E) float32 on CPU."""
    device = device or next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = model.tokenize(list(texts[i : i + batch_size]))
        tokens = {k: v.to(device) if hasattr(v, "to") else v for k, v in tokens.items()}
        out.append(model.encode_text(tokens).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def build_zero_shot_classifier(
    model: torch.nn.Module,
    findings: Sequence[str],
    templates: Sequence[PromptPair] | str | None = None,
    batch_size: int = 64,
    device: str | None = None,
) -> torch.Tensor:
    """Text embeddings of every finding's prompt pair, each prompt encoded once -> (F, 2, E).

    ``[:, 0]`` is the positive ("present") side, ``[:, 1]`` the negative. With several templates the
    embeddings are averaged per side (and re-normalised if the model's embeddings are unit-norm).
    """
    if templates is None or isinstance(templates, str):
        templates = load_templates(templates)
    pairs = {f: prompt_pairs(f, templates) for f in findings}  # the number of pairs may differ per finding
    unique = list(dict.fromkeys(t for ps in pairs.values() for pair in ps for t in pair))  # each encoded once
    emb = encode_texts(model, unique, batch_size, device)
    lookup = {t: emb[i] for i, t in enumerate(unique)}
    norms = emb.norm(dim=-1)
    normalized = bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3))
    rows = []
    for f in findings:
        side = torch.stack([torch.stack([lookup[pos], lookup[neg]]) for pos, neg in pairs[f]])  # (T_f, 2, E)
        mean = side.mean(0)
        rows.append(torch.nn.functional.normalize(mean, dim=-1) if normalized and len(side) > 1 else mean)
    return torch.stack(rows)


def zero_shot_probabilities(
    image_embeddings: np.ndarray | torch.Tensor,
    classifier: np.ndarray | torch.Tensor,
    logit_scale: float = 1.0,
    chunk_size: int = 4096,
) -> np.ndarray:
    """P(present) (N, F) from image embeddings (N, E) and a classifier (F, 2, E)."""
    img = torch.as_tensor(np.asarray(image_embeddings, dtype=np.float32))
    cls = torch.as_tensor(np.asarray(classifier, dtype=np.float32))
    if cls.ndim != 3 or cls.shape[1] != 2 or cls.shape[2] != img.shape[1]:
        raise ValueError(f"classifier shape {tuple(cls.shape)} does not fit image embeddings {tuple(img.shape)}")
    out = []
    for i in range(0, img.shape[0], chunk_size):
        logits = logit_scale * torch.einsum("ne,fce->nfc", img[i : i + chunk_size], cls)
        out.append(logits.softmax(-1)[..., 0])
    return torch.cat(out).numpy() if out else np.zeros((0, cls.shape[0]), dtype=np.float32)


def _statistic(
    labels: np.ndarray, probs: np.ndarray, names: Sequence[str], thresholds, f1_average, strict, estimable=None
):
    """Per-finding fast metrics on a row subset, flattened to ``{"<finding>/<metric>": value}``; the
    ``mean/<metric>`` entries average the ``estimable`` findings only (fixed on the full set, not per replicate)."""
    from silverclip.eval.metrics import METRIC_NAMES, fast_binary_metrics, valid_mask

    valid = valid_mask(labels)
    estimable = np.ones(len(names), bool) if estimable is None else np.asarray(estimable, bool)

    def stat(idx: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        sums: dict[str, list[float]] = {m: [] for m in METRIC_NAMES}
        for j, name in enumerate(names):
            keep = idx[valid[idx, j]]
            m = fast_binary_metrics(labels[keep, j].astype(int), probs[keep, j], thresholds[j], f1_average, strict)
            for k, v in m.items():
                out[f"{name}/{k}"] = v
                if estimable[j]:
                    sums[k].append(v)
        for k, vals in sums.items():
            arr = np.asarray(vals, dtype=float)
            out[f"mean/{k}"] = float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
        return out

    return stat


def _probabilities(emb, template_set: str | None, protocol: str) -> tuple[list[str], np.ndarray, list[str]]:
    from silverclip.eval.radchestct import load_mapping, map_predictions

    probs = zero_shot_probabilities(emb.image, emb.classifier(template_set), emb.logit_scale)
    names = emb.findings
    if protocol == "radchestct":
        probs = map_predictions(probs)
        names = load_mapping().scored
    return list(emb.image_ids), probs, names


def _align(ids: list[str], probs: np.ndarray, labels, names: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    pos = {i: r for r, i in enumerate(ids)}
    common = [i for i in labels.index if i in pos]
    rows = [pos[i] for i in common]
    return common, probs[rows], labels.loc[common, list(names)].to_numpy(dtype=float)


def evaluate_zero_shot(
    embeddings,
    labels,
    out_dir: str | Path | None = None,
    *,
    val_embeddings=None,
    val_labels=None,
    mode: str = "default",
    template_set: str | None = None,
    threshold_method: str = "youden",
    protocol: str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    plots: bool = True,
    min_positives: int = 1,
) -> dict[str, Any]:
    """Zero-shot diagnosis of stored embeddings against labels; writes a report when ``out_dir`` is given.

    embeddings / val_embeddings: an embeddings folder or :class:`~silverclip.eval.embeddings.Embeddings`.
    labels / val_labels: a CT-RATE labels CSV, a RAD-ChestCT labels CSV (``protocol``) or a frame.
    mode: ``default`` (thresholds from the validation split by ``threshold_method`` = youden | f1, or a
        fixed 0.5 = "positive prompt closer than negative" when no validation split is given; binary
        F1) or ``ctclip-compatible`` (CT-CLIP's threshold rule on the test labels themselves,
        ``P > t``, class-weighted F1; ``template_set`` defaults to ``ctclip``).
    Intervals: scan-level percentile bootstrap with ``n_boot`` replicates (thresholds held fixed).
    min_positives: a finding with fewer positives (or negatives) in the evaluated split is reported but
        *not estimable*: it is left out of the mean and listed in ``not_estimable``.
    Returns the results dict (also ``zero_shot.json``/``.md``, ``roc_curves.png``, ``probabilities.csv``).
    """
    import pandas as pd

    from silverclip.eval.bootstrap import bootstrap
    from silverclip.eval.embeddings import Embeddings, load_embeddings
    from silverclip.eval.metrics import estimable_findings, per_finding_metrics, select_threshold
    from silverclip.eval.radchestct import read_eval_labels
    from silverclip.eval.retrieval import scan_id

    if mode not in ("default", "ctclip-compatible"):
        raise ValueError(f"unknown mode {mode!r}; use default or ctclip-compatible")
    emb = embeddings if isinstance(embeddings, Embeddings) else load_embeddings(embeddings)
    if template_set is None and mode == "ctclip-compatible" and "ctclip" in emb.classifiers:
        template_set = "ctclip"
    template_set = template_set or emb.meta.get("default_template_set") or default_template_set()
    label_df, protocol = read_eval_labels(labels, protocol)
    ids, probs, names = _probabilities(emb, template_set, protocol)
    ids, probs, y = _align(ids, probs, label_df, names)
    warnings = []
    if not ids:
        raise ValueError("no embedded volume has a label: check that the ids of embeddings and labels match")
    n_unlabelled = len(emb.image_ids) - len(ids)
    if n_unlabelled:
        warnings.append(f"{n_unlabelled} embedded volume(s) have no label row and were left out")
    n_unembedded = len(label_df) - len(ids)
    if n_unembedded:
        warnings.append(f"{n_unembedded} labelled volume(s) have no embedding (failed or not embedded)")

    strict = mode == "ctclip-compatible"
    f1_average = "weighted" if strict else "binary"
    if strict:
        thresholds = [select_threshold(y[:, j], probs[:, j], "ctclip") for j in range(len(names))]
        source = "CT-CLIP rule (closest ROC point to (0,1) on a 100-step grid) chosen ON THE TEST SET"
    elif val_embeddings is not None and val_labels is not None:
        vemb = val_embeddings if isinstance(val_embeddings, Embeddings) else load_embeddings(val_embeddings)
        vlabels, _ = read_eval_labels(val_labels, protocol)
        vids, vprobs, _ = _probabilities(vemb, template_set, protocol)
        vids, vprobs, vy = _align(vids, vprobs, vlabels, names)
        if set(vids) & set(ids):
            warnings.append(f"{len(set(vids) & set(ids))} volume(s) are in both the validation and the test split")
        thresholds = [select_threshold(vy[:, j], vprobs[:, j], threshold_method) for j in range(len(names))]
        thresholds = [0.5 if not np.isfinite(t) else t for t in thresholds]
        source = f"{threshold_method} on a separate validation split ({len(vids)} volumes)"
    else:
        thresholds = [0.5] * len(names)
        source = "fixed 0.5 (no validation split given: P(present) > P(absent))"

    metrics = per_finding_metrics(y, probs, names, thresholds, f1_average, strict, min_positives=min_positives)
    estimable = estimable_findings(y, min_positives)
    not_estimable = [n for n, e in zip(names, estimable) if not e]
    if not_estimable:
        warnings.append(
            f"{len(not_estimable)} finding(s) have fewer than {min_positives} positive or negative volumes and are "
            f"not estimable (reported, left out of the mean): {', '.join(not_estimable)}"
        )
    groups = [scan_id(i) for i in ids]
    stat = _statistic(y, probs, names, thresholds, f1_average, strict, estimable)
    boot = bootstrap(stat, len(ids), groups, n_boot, seed, alpha)
    results: dict[str, Any] = {
        "task": "zero-shot",
        "protocol": protocol,
        "mode": mode,
        "template_set": template_set,
        "prompts": {n: prompt_pairs(n, load_templates(template_set)) for n in names}
        if template_set in list_template_sets()
        else None,
        "logit_scale": emb.logit_scale,
        "threshold_source": source,
        "threshold_method": "ctclip" if strict else threshold_method,
        "strict_threshold": strict,
        "f1_average": f1_average,
        "findings": list(names),
        "n_volumes": len(ids),
        "n_units": boot.n_units,
        "min_positives": int(min_positives),
        "not_estimable": not_estimable,
        "metrics": metrics,
        "bootstrap": boot.to_dict(),
        "warnings": warnings,
    }
    if out_dir is not None:
        from silverclip.eval.report import plot_roc_curves, write_report, zero_shot_markdown
        from silverclip.io import atomic_to_csv

        out_dir = Path(out_dir)
        write_report(out_dir, "zero_shot", results, zero_shot_markdown(results))
        frame = pd.DataFrame(probs, columns=list(names))
        frame.insert(0, "volume_id", ids)
        atomic_to_csv(frame, out_dir / "probabilities.csv", float_format="%.6f")
        if plots:
            title = f"Zero-shot ROC: {protocol} protocol, `{template_set}` prompts, {mode} mode"
            plot_roc_curves(y, probs, names, out_dir / "roc_curves.png", title)
    return results
