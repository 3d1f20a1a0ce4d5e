"""The pointing game on synthetic volumes: does the saliency peak of a finding fall inside that finding's lesion?

For every validation volume and every finding it truly has (gold label 1) whose lesion mask (written by the
generator, ``synth_info/masks``, bit ``i`` = ``FINDINGS[i]``) is not empty, the saliency map of that finding
(:mod:`silverclip.eval.saliency`, in the volume file's geometry) is computed and its peak voxel looked up in the
mask: a hit when the peak lies inside. Reported per finding and overall (hits / trials), next to *chance*: the
share of the model's field of view (the voxels the map covers) that the mask fills, i.e. the hit rate of a peak
placed uniformly at random. Findings without a local lesion (none here: every synthetic finding is drawn
somewhere) would have an empty mask and are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from silverclip.findings import FINDINGS


def read_mask(path: str | Path) -> np.ndarray:
    """The int32 lesion bitmask of a synthetic volume, in the file's own voxel order."""
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj).astype(np.int32)


def synth_masks(root: str | Path) -> dict[str, Path]:
    """volume id -> mask file, from a synthetic dataset's ``synth_info/volumes.csv`` (empty if it has none)."""
    root = Path(root)
    table = root / "synth_info" / "volumes.csv"
    if not table.is_file():
        return {}
    df = pd.read_csv(table)
    if "mask_path" not in df.columns:
        return {}
    out = {}
    for name, rel in zip(df["VolumeName"], df["mask_path"]):
        vid = str(name)[: -len(".nii.gz")] if str(name).endswith(".nii.gz") else str(name)
        if (root / rel).is_file():
            out[vid] = root / rel
    return out


def pointing_game(
    predictor: Any,
    volumes: Sequence[tuple[str, str | Path, str | Path]],
    labels: pd.DataFrame,
    findings: Sequence[str] | None = None,
    max_volumes: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Pointing game of ``predictor`` (a CLIP :class:`~silverclip.inference.Predictor`) on ``volumes``
    (``(volume_id, scan path, mask path)``) with gold ``labels`` (index volume id, columns the findings).

    Returns ``{"hit_rate", "chance", "n_trials", "n_volumes", "per_finding": {f: {"hits", "n", "hit_rate",
    "chance"}}, "trials": [{"volume_id", "finding", "hit", "peak"}], "failures": [{"volume_id", "reason"}]}``.
    """
    from tqdm.auto import tqdm

    from silverclip.data.readers import load_volume
    from silverclip.eval.saliency import saliency_maps, to_file_geometry

    names = [f for f in (findings or FINDINGS) if f in labels.columns]
    todo = [v for v in volumes if str(v[0]) in labels.index]
    if max_volumes is not None:
        todo = todo[:max_volumes]
    trials: list[dict[str, Any]] = []
    chances: dict[str, list[float]] = {f: [] for f in names}
    n_volumes = 0
    failures: list[dict[str, str]] = []
    for vid, scan, mask_path in tqdm(todo, desc="pointing game", unit="vol", disable=not progress):
        row = labels.loc[str(vid)]
        positive = [f for f in names if row[f] == 1]
        if not positive:
            continue
        try:
            bits = read_mask(mask_path)
            asked = [f for f in positive if (bits >> FINDINGS.index(f) & 1).any()]
            if not asked:
                continue
            volume = load_volume(scan)
            _, maps = saliency_maps(predictor, volume, asked)
        except Exception as e:  # one unreadable volume or mask is listed, the others go on
            failures.append({"volume_id": str(vid), "reason": f"{type(e).__name__}: {e}"})
            continue
        n_volumes += 1
        field = _field_of_view(volume, predictor.preset)
        for f in asked:
            stored, _ = to_file_geometry(maps[f], volume)
            if stored.shape != bits.shape:
                raise ValueError(f"{mask_path}: mask shape {bits.shape} differs from the volume's {stored.shape}")
            mask = (bits >> FINDINGS.index(f) & 1).astype(bool)
            peak = np.unravel_index(int(np.argmax(stored)), stored.shape)
            chances[f].append(float(mask[field].mean()) if field.any() else 0.0)
            trials.append(
                {"volume_id": str(vid), "finding": f, "hit": bool(mask[peak]), "peak": [int(i) for i in peak]}
            )
    per = {}
    for f in names:
        hits = [t["hit"] for t in trials if t["finding"] == f]
        if hits:
            per[f] = {
                "hits": int(sum(hits)),
                "n": len(hits),
                "hit_rate": float(np.mean(hits)),
                "chance": float(np.mean(chances[f])),
            }
    all_hits = [t["hit"] for t in trials]
    all_chance = [c for f in names for c in chances[f]]
    return {
        "hit_rate": float(np.mean(all_hits)) if all_hits else None,
        "chance": float(np.mean(all_chance)) if all_chance else None,
        "n_trials": len(trials),
        "n_volumes": n_volumes,
        "per_finding": per,
        "trials": trials,
        "failures": failures,
    }


def _field_of_view(volume: Any, preset: Any) -> np.ndarray:
    """The voxels of the volume file that the model's input crop covers (bool, file geometry)."""
    from silverclip.eval.saliency import crop_to_volume, to_file_geometry

    crop = tuple(min(int(c), int(s)) for c, s in zip(preset.crop, preset.shape))
    ones = crop_to_volume(np.ones(crop, np.float32), volume, preset)
    return to_file_geometry(ones, volume)[0] > 0.5


def pointing_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Pointing game (saliency peak inside the lesion mask)",
        "",
        f"Overall: {_pct(result.get('hit_rate'))} of {result['n_trials']} (finding, volume) pairs on "
        f"{result['n_volumes']} volumes; chance {_pct(result.get('chance'))}.",
        "",
        "| finding | hits / n | hit rate | chance |",
        "|---|---|---|---|",
    ]
    for f, r in result["per_finding"].items():
        lines.append(f"| {f} | {r['hits']} / {r['n']} | {_pct(r['hit_rate'])} | {_pct(r['chance'])} |")
    return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def add_masks(root: str | Path, split: str | None = "valid", progress: bool = False) -> int:
    """Write the lesion masks a synthetic dataset folder lacks (made before masks existed), for ``split``
    (None: all); the volumes are rendered again from the dataset's ``synth_info/config.yaml`` (deterministic)
    and left as they are. Returns the number of masks written."""
    import yaml
    from tqdm.auto import tqdm

    from silverclip.config import config_from_dict
    from silverclip.synth.dataset import SPLITS, SynthConfig, _write_job, mask_rel_path, plan_dataset

    root = Path(root)
    cfg = config_from_dict(SynthConfig, yaml.safe_load((root / "synth_info" / "config.yaml").read_text()) or {})
    prefix = SPLITS[split][0] if split else ""
    jobs = [j for j in plan_dataset(cfg).jobs if j.name.startswith(prefix) and not (root / mask_rel_path(j)).is_file()]
    for job in tqdm(jobs, desc="lesion masks", unit="vol", disable=not progress):
        _, err = _write_job((job, str(root), cfg.format_version, cfg.compresslevel))
        if err:
            raise RuntimeError(f"{root / job.rel_path}: lesion mask could not be rendered: {err}")
    table = root / "synth_info" / "volumes.csv"
    df = pd.read_csv(table)
    if "mask_path" not in df.columns:
        from silverclip.io import atomic_to_csv

        df.insert(
            df.columns.get_loc("path") + 1,
            "mask_path",
            [f"synth_info/masks/{Path(p).name[:-7]}_mask.nii.gz" for p in df["path"]],
        )
        atomic_to_csv(df, table)
    return len(jobs)


def synth_split(root: str | Path, split: str = "valid") -> tuple[list[tuple[str, Path, Path]], pd.DataFrame]:
    """``(volumes, labels)`` of one split of a synthetic dataset folder (``silverclip synth``), for
    :func:`pointing_game`: its volumes with a lesion mask, and its gold labels indexed by volume id."""
    root = Path(root)
    from silverclip.synth.dataset import SPLITS

    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    prefix, _, label_prefix = SPLITS[split]
    table = root / "synth_info" / "volumes.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{root}: not a synthetic dataset folder (no synth_info/volumes.csv)")
    masks = synth_masks(root)
    if not masks:
        raise ValueError(f"{root}: the synthetic dataset has no lesion masks (made before they existed): regenerate it")
    df = pd.read_csv(table)
    volumes = []
    for name, rel in zip(df["VolumeName"], df["path"]):
        vid = str(name)[: -len(".nii.gz")]
        if vid.startswith(f"{prefix}_") and vid in masks:
            volumes.append((vid, root / rel, masks[vid]))
    labels = pd.read_csv(root / "multi_abnormality_labels" / f"{label_prefix}_predicted_labels.csv")
    labels.index = [str(v)[: -len(".nii.gz")] for v in labels.pop("VolumeName")]
    return volumes, labels


def run_pointing_game(
    checkpoint: str | Path,
    root: str | Path,
    out_dir: str | Path,
    split: str = "valid",
    max_volumes: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Pointing game of a CLIP checkpoint on a synthetic dataset's split; writes ``pointing_game.json``/``.md``."""
    from silverclip.inference import load
    from silverclip.io import atomic_write_json, atomic_write_text

    volumes, labels = synth_split(root, split)
    result = pointing_game(load(checkpoint, device=device), volumes, labels, max_volumes=max_volumes, progress=progress)
    result["checkpoint"], result["split"] = str(checkpoint), split
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "pointing_game.json", result)
    atomic_write_text(out_dir / "pointing_game.md", pointing_markdown(result))
    return result
