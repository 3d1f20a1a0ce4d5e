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


def prompt_pairs(finding: str, templates: Sequence[PromptPair]) -> list[PromptPair]:
    """Fill the templates for one finding (a CT-RATE name, or any free-text finding)."""
    phrase = {f.name: f.prompt for f in load_findings()}.get(finding, finding)
    return [
        (pos.format(name=finding, phrase=phrase), neg.format(name=finding, phrase=phrase)) for pos, neg in templates
    ]


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
    texts = []
    for f in findings:
        for pos, neg in prompt_pairs(f, templates):
            texts += [pos, neg]
    unique = list(dict.fromkeys(texts))  # identical prompts are encoded once
    emb = encode_texts(model, unique, batch_size, device)
    lookup = {t: emb[i] for i, t in enumerate(unique)}
    t = len(templates)
    stacked = torch.stack([lookup[x] for x in texts]).view(len(findings), t, 2, -1)
    norms = emb.norm(dim=-1)
    normalized = bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3))
    mean = stacked.mean(1)
    return torch.nn.functional.normalize(mean, dim=-1) if normalized and t > 1 else mean


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
