"""Read report texts from CSV files: id -> text, the input of every labeller backend.

Three layouts are recognised:

- CT-RATE reports (``radiology_text_reports/*_reports.csv``): ``VolumeName`` + ``Findings_EN`` and
  ``Impressions_EN`` (joined with a blank line, as the LLM prompt expects Findings + Impressions);
- the manual-label CSV (``ctrate_reports_manual/reports_manual_labels.csv``): ``AccessionNo`` + ``report_text``;
- any CSV with an explicit ``id_column`` and ``text_columns``.

Ids are kept exactly as written in the file (``train_1_a_1.nii.gz`` stays so, which keeps label
CSVs in CT-RATE's format); evaluation normalises them with :func:`silverclip.labels.table.volume_id`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

CTRATE_TEXT_COLUMNS = ("Findings_EN", "Impressions_EN")
_LAYOUTS = (
    ("VolumeName", CTRATE_TEXT_COLUMNS),
    ("AccessionNo", ("report_text",)),
)


def read_reports(
    path: str | Path, id_column: str | None = None, text_columns: list[str] | tuple[str, ...] | None = None
) -> dict[str, str]:
    """Return ``{id: report text}`` in file order.

    Missing text cells count as empty; several text columns are joined with a blank line.
    Raises ValueError naming the file when it cannot be read, a column is missing, an id is empty
    or repeated, or the layout is not recognised and no columns were given.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises many exception types for bad files
        raise ValueError(f"{path}: cannot read reports CSV ({e})") from None
    if id_column is None or not text_columns:
        for layout_id, layout_text in _LAYOUTS:
            if (id_column or layout_id) in df.columns and all(c in df.columns for c in (text_columns or layout_text)):
                id_column = id_column or layout_id
                text_columns = list(text_columns or layout_text)
                break
        else:
            raise ValueError(
                f"{path}: unknown reports layout (columns {list(df.columns)[:10]}); pass the id column and text "
                "columns explicitly (CLI: --id-column ID --text-columns COL1,COL2)"
            )
    missing = [c for c in [id_column, *text_columns] if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns are {list(df.columns)}")
    ids = df[id_column].str.strip()
    if (ids == "").any():
        raise ValueError(f"{path}: {int((ids == '').sum())} row(s) with an empty id in column {id_column!r}")
    dup = ids[ids.duplicated()].tolist()
    if dup:
        raise ValueError(f"{path}: duplicate id(s) in column {id_column!r}: {dup[:5]}")
    parts = [df[c].fillna("").str.strip() for c in text_columns]
    texts = parts[0]
    for p in parts[1:]:
        texts = texts.str.cat(p, sep="\n\n").str.strip()
    return dict(zip(ids.tolist(), texts.tolist(), strict=True))


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name one file: equal after resolving symlinks and ``..``, or hard links."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(outputs: dict[str, str | Path], inputs: dict[str, str | Path]) -> None:
    """Raise ValueError when any output path is (the same file as) an input, or two outputs coincide.

    ``outputs``/``inputs`` map a name for the message (``--out``, ``--reports``) to a path.
    """
    for out_name, out in outputs.items():
        for in_name, inp in inputs.items():
            if same_file(out, inp):
                raise ValueError(
                    f"the {out_name} file {out} is the {in_name} file {inp}: refusing to overwrite an input; "
                    "choose another --out"
                )
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if same_file(outputs[a], outputs[b]):
                raise ValueError(f"the {a} and {b} outputs would both be {outputs[a]}; choose another path")
