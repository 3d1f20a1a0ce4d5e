"""Write a synthetic dataset in CT-RATE's exact layout (see docs/synthetic.md).

::

    <out>/dataset/<train|valid>[_fixed]/<split>_<pid>/<split>_<pid>_<scan>/<split>_<pid>_<scan>_<recon>.nii.gz
    <out>/radiology_text_reports/{train,validation}_reports.csv
    <out>/multi_abnormality_labels/{train,valid}_predicted_labels.csv      (gold labels: what is drawn)
    <out>/metadata/{train,validation}_metadata.csv                          (CT-RATE's 44 columns)
    <out>/synth_info/{config.yaml, report_status.csv, volumes.csv}          (generator provenance)
    <out>/synth_info/masks/<volume>_mask.nii.gz        lesion masks: int32, bit i = FINDINGS[i] drawn there,
                                                       same shape/affine as the volume (volumes.csv: mask_path)

``format_version=2`` (default) stores HU like CT-RATE v2, in ``train_fixed``/``valid_fixed`` folders as the
v2 release does; ``format_version=1`` stores raw values ``HU - RescaleIntercept`` (CT-RATE v1) in
``train``/``valid``. ``fixed_folders`` overrides the folder naming. The metadata keeps the scanner's DICOM
RescaleSlope/RescaleIntercept in both cases, as CT-RATE's does (the trap: v2 must not be rescaled again).

Everything is planned from the seed first (cheap), then volumes are rendered independently (optionally
in worker processes); a volume file that already exists is skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from silverclip.config import config_to_dict
from silverclip.findings import FINDING_KEYS, FINDINGS
from silverclip.io import FailureLog, atomic_to_csv, atomic_write_bytes, atomic_write_text
from silverclip.synth.geometry import ScanFrame, VolumeGeometry, recon_geometry, sample_frame
from silverclip.synth.labels import LabelSampler
from silverclip.synth.phantom import Case, render, sample_case
from silverclip.synth.reports import write_report

log = logging.getLogger(__name__)

METADATA_COLUMNS = (
    "VolumeName Manufacturer SeriesDescription ManufacturerModelName PatientSex PatientAge ReconstructionDiameter "
    "DistanceSourceToDetector DistanceSourceToPatient GantryDetectorTilt TableHeight RotationDirection ExposureTime "
    "XRayTubeCurrent Exposure FilterType GeneratorPower FocalSpots ConvolutionKernel PatientPosition RevolutionTime "
    "SingleCollimationWidth TotalCollimationWidth TableSpeed TableFeedPerRotation SpiralPitchFactor "
    "DataCollectionCenterPatient ReconstructionTargetCenterPatient ExposureModulationType CTDIvol "
    "ImagePositionPatient ImageOrientationPatient SliceLocation SamplesPerPixel PhotometricInterpretation Rows "
    "Columns XYSpacing RescaleIntercept RescaleSlope RescaleType NumberofSlices ZSpacing StudyDate"
).split()
REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
SPLITS = {"train": ("train", "train", "train"), "valid": ("valid", "validation", "valid")}
"""split -> (folder/id prefix, reports/metadata file prefix, labels file prefix), as CT-RATE names them."""


@dataclass
class SynthConfig:
    """Options of ``silverclip synth`` (see docs/synthetic.md for what each knob does)."""

    n_patients: int = 40
    seed: int = 0
    shape: tuple[int, int, int] = (64, 64, 48)
    difficulty: float = 0.3
    valid_fraction: float = 0.2
    report_noise: float = 0.1
    extra_scan_prob: float = 0.15
    max_scans: int = 3
    second_recon_prob: float = 0.5
    format_version: int = 2
    fixed_folders: bool | None = None
    workers: int = 1
    compresslevel: int = 4

    def validate(self) -> None:
        if self.n_patients < 1:
            raise ValueError("n_patients must be >= 1")
        if len(self.shape) != 3 or min(self.shape) < 8:
            raise ValueError(f"shape must be 3 sizes >= 8, got {self.shape}")
        for name in ("difficulty", "valid_fraction", "report_noise", "extra_scan_prob", "second_recon_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.format_version not in (1, 2):
            raise ValueError(f"format_version must be 1 or 2, got {self.format_version}")
        if self.max_scans < 1 or self.max_scans > 26:
            raise ValueError("max_scans must be in 1..26")

    @property
    def use_fixed_folders(self) -> bool:
        return self.format_version == 2 if self.fixed_folders is None else self.fixed_folders


@dataclass
class VolumeJob:
    """Everything needed to render and write one volume (picklable for worker processes)."""

    name: str  # e.g. train_3_a_1 (no suffix)
    rel_path: str
    case: Case
    frame: ScanFrame
    geom: VolumeGeometry
    sharpness: float
    intercept: int
    render_seed: tuple[int, ...]


@lru_cache(maxsize=1)
def scanner_profiles() -> list[dict]:
    text = resources.files("silverclip.resources").joinpath("synth/scanners.yaml").read_text()
    return yaml.safe_load(text)["profiles"]


def _fmt_list(values) -> str:
    return "[" + ", ".join(f"{float(v):.10g}" for v in values) + "]"


def _metadata_row(name, prof, recon, geom, frame, sex, age, date, table_height, rng) -> dict:
    rc = prof["recons"][min(recon - 1, len(prof["recons"]) - 1)]
    sz = geom.spacing[2]
    desc = rc["description"].format(z=f"{sz:.2f}") if rc["description"] else None
    ipp = geom.image_position_lps()
    tube = int(rng.integers(120, 450))
    exp_time = int(rng.integers(400, 650))
    col, tcol = prof["collimation"]
    return {
        "VolumeName": f"{name}.nii.gz",
        "Manufacturer": prof["manufacturer"],
        "SeriesDescription": desc,
        "ManufacturerModelName": prof["model"],
        "PatientSex": sex,
        "PatientAge": f"{age:03d}Y",
        "ReconstructionDiameter": round(frame.fov, 1),
        "DistanceSourceToDetector": prof["source_to_detector"],
        "DistanceSourceToPatient": prof["source_to_patient"],
        "GantryDetectorTilt": 0,
        "TableHeight": table_height,
        "RotationDirection": "CW",
        "ExposureTime": exp_time,
        "XRayTubeCurrent": tube,
        "Exposure": int(tube * exp_time / 1000 * 0.6),
        "FilterType": rc["filter"],
        "GeneratorPower": prof["generator_power"],
        "FocalSpots": prof["focal_spots"],
        "ConvolutionKernel": rc["kernel"],
        "PatientPosition": "HFS",
        "RevolutionTime": prof["revolution_time"],
        "SingleCollimationWidth": col,
        "TotalCollimationWidth": tcol,
        "TableSpeed": None,
        "TableFeedPerRotation": None,
        "SpiralPitchFactor": prof["pitch"],
        "DataCollectionCenterPatient": None,
        "ReconstructionTargetCenterPatient": None,
        "ExposureModulationType": prof["modulation"],
        "CTDIvol": round(float(rng.uniform(3, 15)), 6),
        "ImagePositionPatient": _fmt_list(ipp),
        "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
        "SliceLocation": round(ipp[2], 3),
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": geom.shape[1],
        "Columns": geom.shape[0],
        "XYSpacing": _fmt_list(geom.spacing[1::-1]),  # DICOM PixelSpacing order: row (y), column (x)
        "RescaleIntercept": prof["rescale_intercept"],
        "RescaleSlope": 1,
        "RescaleType": prof["rescale_type"],
        "NumberofSlices": geom.shape[2],
        "ZSpacing": round(sz, 6),
        "StudyDate": date,
    }


@dataclass
class Plan:
    jobs: list[VolumeJob]
    reports: dict[str, pd.DataFrame]
    labels: dict[str, pd.DataFrame]
    metadata: dict[str, pd.DataFrame]
    status: pd.DataFrame


def plan_dataset(cfg: SynthConfig) -> Plan:
    """Draw every patient, scan, report and geometry from ``cfg.seed`` (no pixels yet)."""
    cfg.validate()
    sampler = LabelSampler()
    profiles = scanner_profiles()
    weights = np.array([p["weight"] for p in profiles], float)
    n_valid = int(round(cfg.n_patients * cfg.valid_fraction))
    if cfg.valid_fraction > 0 and cfg.n_patients > 1:
        n_valid = min(max(n_valid, 1), cfg.n_patients - 1)
    counts = {"train": cfg.n_patients - n_valid, "valid": n_valid}
    jobs: list[VolumeJob] = []
    rows: dict[str, dict[str, list]] = {s: {"reports": [], "labels": [], "metadata": []} for s in SPLITS}
    status_rows = []
    for split_code, split in enumerate(SPLITS):
        prefix = SPLITS[split][0]
        folder = f"{prefix}_fixed" if cfg.use_fixed_folders else prefix
        for pid in range(1, counts[split] + 1):
            prng = np.random.default_rng([cfg.seed, split_code, pid])
            n_scans = 1
            while n_scans < cfg.max_scans and prng.random() < cfg.extra_scan_prob:
                n_scans += 1
            scan_labels = sampler.patient(n_scans, prng)
            sex = "M" if prng.random() < 0.55 else "F"
            age0 = int(np.clip(prng.normal(55 + 8 * scan_labels[0][1], 14), 18, 95))
            date0 = pd.Timestamp(2019, 1, 1) + pd.Timedelta(days=int(prng.integers(0, 1400)))
            for s_idx, labels in enumerate(scan_labels):
                letter = chr(ord("a") + s_idx)
                srng = np.random.default_rng([cfg.seed, split_code, pid, s_idx + 1, 0])
                case = sample_case(labels, cfg.difficulty, srng)
                frame = sample_frame(srng)
                prof = profiles[int(srng.choice(len(profiles), p=weights / weights.sum()))]
                n_recons = 2 if srng.random() < cfg.second_recon_prob else 1
                date = date0 + pd.Timedelta(days=int(60 * s_idx + srng.integers(0, 60)))
                age = age0 + (date - date0).days // 365
                table_h = round(float(srng.uniform(70, 200)), 1)
                report_rng = np.random.default_rng([cfg.seed, split_code, pid, s_idx + 1, 99])
                recon_geoms = [
                    recon_geometry(
                        frame, cfg.shape, r, np.random.default_rng([cfg.seed, split_code, pid, s_idx + 1, r])
                    )
                    for r in range(1, n_recons + 1)
                ]
                report = write_report(case, report_rng, cfg.report_noise, z_spacing=recon_geoms[0].spacing[2])
                for r, geom in enumerate(recon_geoms, start=1):
                    name = f"{prefix}_{pid}_{letter}_{r}"
                    rel = f"dataset/{folder}/{prefix}_{pid}/{prefix}_{pid}_{letter}/{name}.nii.gz"
                    rc = prof["recons"][min(r - 1, len(prof["recons"]) - 1)]
                    jobs.append(
                        VolumeJob(
                            name=name,
                            rel_path=rel,
                            case=case,
                            frame=frame,
                            geom=geom,
                            sharpness=float(rc["kernel_sharpness"]),
                            intercept=int(prof["rescale_intercept"]),
                            render_seed=(cfg.seed, split_code, pid, s_idx + 1, r, 7),
                        )
                    )
                    vol_name = f"{name}.nii.gz"
                    rows[split]["reports"].append(
                        (vol_name, report.clinical_information, report.technique, report.findings, report.impressions)
                    )
                    rows[split]["labels"].append((vol_name, *[int(x) for x in labels]))
                    mrng = np.random.default_rng([cfg.seed, split_code, pid, s_idx + 1, r, 11])
                    rows[split]["metadata"].append(
                        _metadata_row(
                            name, prof, r, geom, frame, sex, int(age), int(date.strftime("%Y%m%d")), table_h, mrng
                        )
                    )
                    status_rows.append((vol_name, *[report.status[k] for k in FINDING_KEYS]))
    reports = {s: pd.DataFrame(rows[s]["reports"], columns=list(REPORT_COLUMNS)) for s in SPLITS}
    labels = {s: pd.DataFrame(rows[s]["labels"], columns=["VolumeName", *FINDINGS]) for s in SPLITS}
    metadata = {s: pd.DataFrame(rows[s]["metadata"], columns=METADATA_COLUMNS) for s in SPLITS}
    status = pd.DataFrame(status_rows, columns=["VolumeName", *FINDINGS])
    return Plan(jobs, reports, labels, metadata, status)


def render_job(job: VolumeJob, format_version: int = 2, masks: dict | None = None) -> np.ndarray:
    """The stored int16 array of ``job`` (stored orientation; HU for v2, HU - intercept for v1).

    ``masks``: filled with ``{"bits": int32 lesion bitmask in stored orientation}`` (:func:`mask_bits`).
    """
    from silverclip.synth.phantom import mask_bits

    noise_scale = 0.8 + 0.5 * float(np.mean(list(job.case.difficulty.values()) or [0.3]))
    drawn: dict | None = {} if masks is not None else None
    rng = np.random.default_rng(job.render_seed)
    hu = render(job.case, job.geom, job.frame, rng, job.sharpness, noise_scale, masks=drawn)
    arr = job.geom.to_stored(hu)
    if format_version == 1:
        arr = (arr.astype(np.int32) - job.intercept).astype(np.int16)
    if masks is not None:
        masks["bits"] = np.ascontiguousarray(job.geom.to_stored(mask_bits(drawn, hu.shape)))
    return np.ascontiguousarray(arr)


def mask_rel_path(job: VolumeJob) -> str:
    return f"synth_info/masks/{job.name}_mask.nii.gz"


def nifti_bytes(arr: np.ndarray, affine: np.ndarray, compresslevel: int = 4, descrip: str = "volume") -> bytes:
    """A gzipped NIfTI-1 file as bytes, with a zero gzip timestamp so that files are byte-reproducible.

    The header's ``descrip`` starts with the generator's marker (:mod:`silverclip.data.provenance`).
    """
    import nibabel as nib

    from silverclip.data.provenance import SYNTH_MARKER

    img = nib.Nifti1Image(arr, affine)
    img.header["descrip"] = f"{SYNTH_MARKER} {descrip}"[:79].encode()
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=compresslevel, mtime=0)


def _write_job(args: tuple[VolumeJob, str, int, int]) -> tuple[str, str | None]:
    job, out_dir, format_version, level = args
    path = Path(out_dir) / job.rel_path
    mask = Path(out_dir) / mask_rel_path(job)
    try:
        if path.exists() and mask.exists():
            return job.name, None
        masks: dict = {}
        arr = render_job(job, format_version, masks)  # deterministic: a volume rendered again is the same
        if not path.exists():
            atomic_write_bytes(path, nifti_bytes(arr, job.geom.affine(), level))
        atomic_write_bytes(mask, nifti_bytes(masks["bits"], job.geom.affine(), level, descrip="lesion mask"))
        return job.name, None
    except Exception as e:  # one bad volume never stops the run
        return job.name, f"{type(e).__name__}: {e}"


def make_synthetic_ctrate(out_dir: str | Path, config: SynthConfig | None = None, progress: bool = True) -> FailureLog:
    """Write the synthetic dataset to ``out_dir``; returns the failure log (empty on success).

    Resumable: volumes already on disk are kept. Refuses to write into a folder made with a different
    config (other than ``workers``), which would mix two datasets.
    """
    from tqdm import tqdm

    cfg = config or SynthConfig()
    cfg.validate()
    out = Path(out_dir)
    info = out / "synth_info" / "config.yaml"
    cfg_dict = config_to_dict(cfg)
    cfg_dict.pop("workers")
    if info.exists():
        old = yaml.safe_load(info.read_text()) or {}
        if old != cfg_dict:
            diff = sorted(k for k in set(old) | set(cfg_dict) if old.get(k) != cfg_dict.get(k))
            raise ValueError(
                f"{out} holds a synthetic dataset made with other settings ({', '.join(diff)}); use a new folder"
            )
    atomic_write_text(info, yaml.safe_dump(cfg_dict, sort_keys=False))
    plan = plan_dataset(cfg)
    failures = FailureLog("synth")
    args = [(j, str(out), cfg.format_version, cfg.compresslevel) for j in plan.jobs]
    bar = tqdm(total=len(args), desc="synth", unit="vol", disable=not progress)
    if cfg.workers > 1:
        import multiprocessing as mp
        import os

        from silverclip.workers import init_worker

        ctx = mp.get_context("spawn")
        with ctx.Pool(cfg.workers, initializer=init_worker, initargs=(os.getpid(), None)) as pool:
            for name, err in pool.imap_unordered(_write_job, args, chunksize=2):
                if err:
                    failures.add(name, out / "dataset", err)
                bar.update()
    else:
        for a in args:
            name, err = _write_job(a)
            if err:
                failures.add(name, out / a[0].rel_path, err)
            bar.update()
    bar.close()
    for split, (_, text_prefix, label_prefix) in SPLITS.items():
        atomic_to_csv(plan.reports[split], out / "radiology_text_reports" / f"{text_prefix}_reports.csv")
        atomic_to_csv(plan.labels[split], out / "multi_abnormality_labels" / f"{label_prefix}_predicted_labels.csv")
        atomic_to_csv(plan.metadata[split], out / "metadata" / f"{text_prefix}_metadata.csv")
    atomic_to_csv(plan.status, out / "synth_info" / "report_status.csv")
    vols = pd.DataFrame(
        [
            {
                "VolumeName": f"{j.name}.nii.gz",
                "path": j.rel_path,
                "mask_path": mask_rel_path(j),
                "axcodes": "".join(j.geom.axcodes),
                "shape": "x".join(map(str, j.geom.shape)),
                "format_version": cfg.format_version,
                "kernel_sharpness": j.sharpness,
                "difficulty": round(float(np.mean(list(j.case.difficulty.values()) or [np.nan])), 3),
            }
            for j in plan.jobs
        ]
    )
    atomic_to_csv(vols, out / "synth_info" / "volumes.csv")
    return failures


def config_from_args(**kw) -> SynthConfig:
    """Build a config from keyword arguments, ignoring ``None`` values (CLI helper)."""
    fields = {f.name for f in dataclasses.fields(SynthConfig)}
    return SynthConfig(**{k: v for k, v in kw.items() if v is not None and k in fields})
