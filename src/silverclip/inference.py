"""Inference on your own scans, in three lines::

    model = silverclip.inference.load("runs/clip/checkpoint")
    probs = model.predict("scan.nii.gz")                 # or a DICOM series folder
    hits = model.search("right pleural effusion", "runs/embeddings/valid")

``predict`` preprocesses the scan with the preset stored in the checkpoint (the same resampling and
HU window as training), takes the centre crop, embeds it once and returns P(present) for each of
the 18 findings (and for any extra free-text findings) from the zero-shot prompt pairs.
``search`` ranks the volumes of a stored embeddings folder (``silverclip embed``) by cosine
similarity to a text query.

Honest predictions: a checkpoint calibrated by the pipeline (:func:`silverclip.checkpoint.record_calibration`)
carries per-finding thresholds chosen on a validation split and the provenance of its training data;
:meth:`Predictor.decide` turns P(present) into present/absent at those thresholds and
:meth:`Predictor.domain_warning` says when a model trained on synthetic volumes meets a real scan.

Cold start: the zero-shot classifier (the prompt-pair text embeddings) of a checkpoint and template set is
cached (``$SILVERCLIP_CACHE_DIR``, default ``~/.cache/silverclip``, ``zero_shot/<key>.safetensors``; the key
hashes ``checkpoint.json``, the weights file's size and time, the findings and every prompt). With the cache,
:func:`load` builds only the image half of the CLIP model (:class:`~silverclip.models.clip.CLIPImageEncoder`),
so ``predict`` imports no transformers; the text tower is loaded on first use (extra free-text findings,
``search``). benchmarks/cold_start.py measures it.
"""

from __future__ import annotations

import hashlib
import json
import os
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
        classifier: torch.Tensor | None = None,
        checkpoint: str | Path | None = None,
    ) -> None:
        from silverclip.eval.zero_shot import build_zero_shot_classifier, logit_scale_of

        # An image-only model (CLIPImageEncoder) comes with a cached classifier and its checkpoint folder,
        # from which the full model is loaded when text is needed.
        needs = ["encode_image"] + ([] if classifier is not None and checkpoint else ["encode_text", "tokenize"])
        if not all(hasattr(model, a) for a in needs):
            raise TypeError("predict/search need a CLIP checkpoint (encode_image, encode_text, tokenize)")
        self.checkpoint = checkpoint
        if not meta.get("preset"):
            raise ValueError("the checkpoint stores no preprocessing preset; cannot preprocess a scan for it")
        self.model = model.eval().to(device)
        self.meta = meta
        self.device = device
        self.preset = load_preset(meta["preset"])
        calibrated = meta.get("threshold_template_set")
        self.template_set = resolve_template_set(meta, template_set)
        #: P(present) threshold per finding, chosen on the validation split (empty: uncalibrated checkpoint)
        self.thresholds: dict[str, float] = (
            {str(k): float(v) for k, v in (meta.get("thresholds") or {}).items()}
            if calibrated in (None, self.template_set)
            else {}
        )
        self.provenance: dict[str, Any] = dict(meta.get("provenance") or {})
        self.logit_scale = logit_scale_of(model)
        self.findings = list(meta.get("findings") or FINDINGS)
        if classifier is None:
            classifier = build_zero_shot_classifier(model, self.findings, self.template_set, device=device)
        self.classifier = classifier.to(device)
        self._extra: dict[str, torch.Tensor] = {}

    def _text_model(self) -> torch.nn.Module:
        """The model with its text tower (the full CLIP model is loaded now if only the image half was)."""
        if not hasattr(self.model, "encode_text"):
            from silverclip.checkpoint import load_model

            self.model, _ = load_model(self.checkpoint, map_location=self.device)  # type: ignore[arg-type]
        return self.model

    @torch.no_grad()
    def embed(self, scan: str | Path | np.ndarray) -> np.ndarray:
        """Image embedding (E,) of a scan path, or of an HU array already preprocessed to ``preset.shape``."""
        from silverclip.data.model_input import volume_tensor as model_input
        from silverclip.precision import autocast

        hu = scan if isinstance(scan, np.ndarray) else preprocess_scan(scan, self.preset)
        x = model_input(hu, self.preset, self.device)  # the stored crop travels, normalised on the device
        with autocast(self.device, "auto"):  # bf16 on a GPU, as embed and validation
            return self.model.encode_image(x).float().cpu().numpy()[0]

    def _classifier_for(self, extra: Sequence[str]) -> tuple[list[str], torch.Tensor]:
        from silverclip.eval.zero_shot import build_zero_shot_classifier

        new = [f for f in extra if f not in self._extra and f not in self.findings]
        if new:
            cls = build_zero_shot_classifier(self._text_model(), new, self.template_set, device=self.device)
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

    def decide(self, probs: dict[str, float]) -> dict[str, bool | None]:
        """present (``P >= threshold``) / absent per finding; None where the checkpoint holds no threshold."""
        return {f: (p >= self.thresholds[f]) if f in self.thresholds else None for f, p in probs.items()}

    def domain_warning(self, scan: str | Path) -> str | None:
        """A warning when the model was trained on synthetic volumes and ``scan`` is not one (no generator marker,
        :func:`silverclip.data.provenance.is_synthetic_scan`); None otherwise."""
        from silverclip.data.provenance import is_synthetic_scan

        if self.provenance.get("synthetic") and not is_synthetic_scan(scan):
            return (
                f"this model was trained on synthetic volumes ({self.provenance.get('dataset', 'synthetic data')}) "
                f"and {scan} is not one: its probabilities say nothing about real findings"
            )
        return None

    def prediction_lines(self, probs: dict[str, float], extra: Sequence[str] = ()) -> list[str]:
        """The table ``silverclip predict`` prints: finding, P(present), present/absent at the threshold."""
        width = max(len(f) for f in probs)
        decided = self.decide(probs)
        lines = []
        for f, p in probs.items():
            if f in extra and f not in self.findings:
                verdict = "(free text, no threshold)"
            elif decided[f] is None:
                verdict = "(no threshold in the checkpoint)"
            else:
                verdict = f"{'PRESENT' if decided[f] else 'absent':<7}  (threshold {self.thresholds[f]:.4f})"
            lines.append(f"  {f:<{width}}  {p:.4f}  {verdict}")
        return lines

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        from silverclip.eval.zero_shot import encode_texts

        return encode_texts(self._text_model(), list(texts), device=self.device).numpy()

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


def cache_dir() -> Path:
    """``$SILVERCLIP_CACHE_DIR`` or ``$XDG_CACHE_HOME/silverclip`` (default ``~/.cache/silverclip``)."""
    if os.environ.get("SILVERCLIP_CACHE_DIR"):
        return Path(os.environ["SILVERCLIP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "silverclip"


def classifier_cache_file(checkpoint: str | Path, meta: dict[str, Any], template_set: str) -> Path:
    """Where the zero-shot classifier of this checkpoint (its exact files) and template set is cached."""
    from silverclip.checkpoint import META_FILE, WEIGHTS_FILE
    from silverclip.eval.zero_shot import load_templates, prompt_pairs

    folder = Path(checkpoint)
    st = (folder / WEIGHTS_FILE).stat()
    templates = load_templates(template_set)
    findings = list(meta.get("findings") or FINDINGS)
    h = hashlib.sha256()
    h.update((folder / META_FILE).read_bytes())
    prompts = [prompt_pairs(f, templates) for f in findings]
    h.update(json.dumps([st.st_size, st.st_mtime_ns, findings, prompts]).encode())
    return cache_dir() / "zero_shot" / f"{h.hexdigest()[:32]}.safetensors"


def load_image_encoder(checkpoint: str | Path, device: str = "cpu") -> torch.nn.Module:
    """The image half of a CLIP checkpoint (:class:`~silverclip.models.clip.CLIPImageEncoder`), in eval mode."""
    from safetensors import safe_open

    from silverclip.checkpoint import WEIGHTS_FILE, read_checkpoint_meta
    from silverclip.device import resolve_device
    from silverclip.models.clip import CLIPImageEncoder

    device = str(resolve_device(device))
    folder = Path(checkpoint)
    meta = read_checkpoint_meta(folder)
    model = CLIPImageEncoder.from_config(meta["model_config"])
    want = model.state_dict()
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt", device=device) as f:
        state = {k: f.get_tensor(k) for k in f.keys() if k in want}  # noqa: SIM118 - safe_open has no __iter__
    missing = [k for k in want if k not in state]
    if missing:
        raise ValueError(f"{folder / WEIGHTS_FILE}: no image weights {missing[:5]} for {meta['model_config']}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{folder / WEIGHTS_FILE}: weights do not fit the model in checkpoint.json: {e}") from e
    return model.to(device).eval()


def resolve_template_set(meta: dict[str, Any], template_set: str | None) -> str:
    """The prompt template set to score with: the one asked for, else the one the checkpoint's thresholds were
    chosen with (``threshold_template_set``, when it is a known set), else prompts.yaml's default."""
    from silverclip.eval.zero_shot import default_template_set, list_template_sets

    if template_set:
        return template_set
    calibrated = meta.get("threshold_template_set")
    return calibrated if calibrated in list_template_sets() else default_template_set()


def load(checkpoint: str | Path, device: str = "cpu", template_set: str | None = None) -> Predictor:
    """Load a CLIP checkpoint folder (``silverclip.checkpoint``) as a :class:`Predictor`.

    With a cached zero-shot classifier only the image half is built (the module docstring); otherwise the
    full model, and the classifier it computes is cached (best effort: an unwritable cache is skipped).
    """
    from silverclip.checkpoint import load_model, read_checkpoint_meta

    meta = read_checkpoint_meta(checkpoint)
    template_set = resolve_template_set(meta, template_set)  # before the cache key: the set the classifier is for
    cache = None
    if (meta.get("model_config") or {}).get("name") in ("clip", "clip_authors") and meta.get("preset"):
        try:
            cache = classifier_cache_file(checkpoint, meta, template_set)
        except (OSError, ValueError):
            cache = None
    if cache is not None and cache.is_file():
        from safetensors.torch import load_file

        try:
            classifier = load_file(str(cache))["classifier"]
            encoder = load_image_encoder(checkpoint, device=device)
            return Predictor(encoder, meta, device, template_set, classifier=classifier, checkpoint=checkpoint)
        except (OSError, KeyError, ValueError, RuntimeError):
            pass  # a damaged cache file: computed again below
    model, meta = load_model(checkpoint, map_location=device)
    predictor = Predictor(model, meta, device=device, template_set=template_set, checkpoint=checkpoint)
    if cache is not None:
        from safetensors.torch import save

        from silverclip.io import atomic_write_bytes

        try:
            atomic_write_bytes(cache, save({"classifier": predictor.classifier.detach().float().cpu().contiguous()}))
        except OSError:
            pass
    return predictor
