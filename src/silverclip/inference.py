"""Inference on your own scans, in three lines::

    model = silverclip.inference.load("runs/clip/checkpoint")
    probs = model.predict("scan.nii.gz")                 # or a DICOM series folder
    hits = model.search("right pleural effusion", "runs/embeddings/valid")

``predict`` preprocesses the scan with the preset stored in the checkpoint (the same resampling and
HU window as training), takes the centre crop, embeds it once and returns P(present) for each of
the 18 findings (and for any extra free-text findings) from the zero-shot prompt pairs.
``search`` ranks the volumes of a stored embeddings folder (``silverclip embed``) by cosine
similarity to a text query.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from silverclip.data.presets import Preset, load_preset
from silverclip.findings import FINDINGS


def preprocess_scan(path: str | Path, preset: Preset) -> np.ndarray:
    """A NIfTI file or DICOM series folder -> int16 HU array of ``preset.shape`` (x, y, z), clipped to the window.

    The data layer's ``preprocess_path``: the same code that fills the training cache.
    """
    from silverclip.data.preprocess import preprocess_path

    return np.asarray(preprocess_path(path, preset))


class Predictor:
    """A loaded CLIP checkpoint ready for single-scan inference and text search.

    ``classifier`` (18, 2, E) holds the zero-shot prompt-pair embeddings of the 18 findings, computed
    once at load time; extra free-text findings are encoded on demand (and memoised).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: str = "cpu",
        template_set: str | None = None,
    ) -> None:
        from silverclip.eval.zero_shot import build_zero_shot_classifier, default_template_set, logit_scale_of

        if not all(hasattr(model, a) for a in ("encode_image", "encode_text", "tokenize")):
            raise TypeError("predict/search need a CLIP checkpoint (encode_image, encode_text, tokenize)")
        if not meta.get("preset"):
            raise ValueError("the checkpoint stores no preprocessing preset; cannot preprocess a scan for it")
        self.model = model.eval().to(device)
        self.meta = meta
        self.device = device
        self.preset = load_preset(meta["preset"])
        self.template_set = template_set or default_template_set()
        self.logit_scale = logit_scale_of(model)
        self.findings = list(meta.get("findings") or FINDINGS)
        self.classifier = build_zero_shot_classifier(model, self.findings, self.template_set, device=device)
        self._extra: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def embed(self, scan: str | Path | np.ndarray) -> np.ndarray:
        """Image embedding (E,) of a scan path, or of an HU array already preprocessed to ``preset.shape``."""
        from silverclip.eval.embeddings import model_input
        from silverclip.precision import autocast

        hu = scan if isinstance(scan, np.ndarray) else preprocess_scan(scan, self.preset)
        x = model_input(hu, self.preset, self.device)  # the stored crop travels, normalised on the device
        with autocast(self.device, "auto"):  # bf16 on a GPU, as embed and validation
            return self.model.encode_image(x).float().cpu().numpy()[0]

    def _classifier_for(self, extra: Sequence[str]) -> tuple[list[str], torch.Tensor]:
        from silverclip.eval.zero_shot import build_zero_shot_classifier

        new = [f for f in extra if f not in self._extra and f not in self.findings]
        if new:
            cls = build_zero_shot_classifier(self.model, new, self.template_set, device=self.device)
            self._extra.update({f: cls[i] for i, f in enumerate(new)})
        names = [*self.findings, *[f for f in extra if f not in self.findings]]
        parts = [self.classifier] + [self._extra[f][None] for f in names[len(self.findings) :]]
        return names, torch.cat(parts)

    def predict(self, scan: str | Path | np.ndarray, findings: Sequence[str] = ()) -> dict[str, float]:
        """P(present) for the checkpoint's findings (CT-RATE's 18) followed by any extra free-text findings."""
        from silverclip.eval.zero_shot import zero_shot_probabilities

        names, cls = self._classifier_for(list(findings))
        probs = zero_shot_probabilities(self.embed(scan)[None], cls, self.logit_scale)[0]
        return {n: float(p) for n, p in zip(names, probs)}

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        from silverclip.eval.zero_shot import encode_texts

        return encode_texts(self.model, list(texts), device=self.device).numpy()

    def search(self, text: str, index: Any, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` volumes of ``index`` (an embeddings folder or Embeddings) closest to ``text``.

        Returns ``[{"rank", "id", "score"}]`` with cosine similarity scores, best first.
        """
        from silverclip.eval.embeddings import Embeddings, load_embeddings
        from silverclip.eval.retrieval import l2_normalize, stable_topk

        emb = index if isinstance(index, Embeddings) else load_embeddings(index)
        q = self.embed_text([text])
        if q.shape[1] != emb.image.shape[1]:
            raise ValueError(
                f"the index holds {emb.image.shape[1]}-d embeddings but this model makes {q.shape[1]}-d ones: "
                "was it embedded with a different checkpoint?"
            )
        sims = l2_normalize(q) @ l2_normalize(emb.image).T
        vals, idx = stable_topk(sims, k)
        return [
            {"rank": r + 1, "id": emb.image_ids[i], "score": float(v)}
            for r, (v, i) in enumerate(zip(vals[0].tolist(), idx[0].tolist()))
        ]


def load(checkpoint: str | Path, device: str = "cpu", template_set: str | None = None) -> Predictor:
    """Load a CLIP checkpoint folder (``silverclip.checkpoint``) as a :class:`Predictor`."""
    from silverclip.checkpoint import load_model

    model, meta = load_model(checkpoint, map_location=device)
    return Predictor(model, meta, device=device, template_set=template_set)
