"""Where a scan comes from: the marker the synthetic generator writes, and the provenance of a training set.

The generator (:mod:`silverclip.synth.dataset`) writes ``descrip = "silverclip synthetic ..."`` into every
NIfTI header it makes. :func:`is_synthetic_scan` reads that header field only (348 bytes, no voxels), so
``silverclip predict`` can warn when a model trained on synthetic volumes is applied to a real scan: a scan
without the marker (any DICOM series, any other NIfTI) counts as real. Synthetic datasets written before the
marker existed count as real too (their volumes carry no marker); regenerate them to silence the warning.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

SYNTH_MARKER = "silverclip synthetic"


def is_synthetic_scan(path: str | Path) -> bool:
    """True when ``path`` is a NIfTI file written by the synthetic generator (its header's ``descrip``)."""
    path = Path(path)
    if not path.is_file() or not path.name.lower().endswith((".nii", ".nii.gz")):
        return False
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            header = f.read(348)
    except OSError:
        return False
    return len(header) == 348 and header[148:228].rstrip(b"\0").decode("latin-1").startswith(SYNTH_MARKER)


def training_provenance(
    kind: str,
    *,
    root: str | Path | None = None,
    first_volume: str | Path | None = None,
    preset: str | None = None,
    version: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """``{"dataset", "synthetic", "preset", ...}`` of a training set, as recorded in a checkpoint.

    kind: the pipeline's ``source.kind`` (``synth``, ``ctrate``, ``manifest``). A CT-RATE-layout folder made by
    the generator (``synth_info/``) or a training volume carrying the generator's marker counts as synthetic.
    """
    synthetic = kind == "synth"
    if not synthetic and root is not None and (Path(root) / "synth_info" / "config.yaml").is_file():
        synthetic = True
    if not synthetic and first_volume is not None:
        synthetic = is_synthetic_scan(first_volume)
    if kind == "synth":
        dataset = "silverclip synthetic CT-RATE"
    elif kind == "ctrate":
        dataset = f"CT-RATE {version}" if version else "CT-RATE"
        if synthetic:
            dataset = f"silverclip synthetic CT-RATE layout ({root})"
    else:
        dataset = f"manifest {Path(str(root)).name}" if root else "manifest"
    out: dict[str, Any] = {"dataset": dataset, "synthetic": bool(synthetic), "source": kind}
    if preset is not None:
        out["preset"] = str(preset)
    if seed is not None and kind == "synth":
        out["seed"] = int(seed)
    return out
