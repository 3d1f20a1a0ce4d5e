"""report.html of a tiny end-to-end run: its sections, no network, rendered by a real headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline_fixtures import tiny_config
from silverclip.checkpoint import read_checkpoint_meta
from silverclip.cli import main
from silverclip.findings import FINDINGS
from silverclip.pipeline.browser import dump_dom, find_chromium, page_requests, screenshot
from silverclip.pipeline.html_report import SECTIONS

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("html")
    assert main(["run", str(tiny_config(tmp, tmp / "run"))]) == 0
    return tmp / "run"


@pytest.mark.slow
def test_run_writes_a_self_contained_report(run: Path, tmp_path: Path) -> None:
    page = (run / "report.html").read_text()
    for sid, title in SECTIONS:
        assert f"<section id='{sid}'><h2>{title}</h2>" in page, sid
    assert not EXTERNAL.search(page) and "<script" not in page
    assert page.count('src="data:image/png;base64,') >= 10  # ROC, training curves, gallery and retrieval thumbnails
    margins = [float(m) for m in re.findall(r"most confident error: margin ([0-9.]+)", page)]
    assert margins == sorted(margins, reverse=True)  # the most confident errors first
    assert page.count("class='card'") >= 1 and "class='hits i2i'" in page and "class='hits r2i'" in page
    assert "report.html" in (run / "report.md").read_text()
    # the pipeline calibrated the checkpoint it evaluated and ran the pointing game on the synthetic masks
    meta = read_checkpoint_meta(run / "clip" / "last")
    assert set(meta["thresholds"]) == set(FINDINGS) and meta["provenance"]["synthetic"] is True
    assert "pointing game" in page.lower() and (run / "eval" / "pointing" / "pointing_game.json").is_file()
    # silverclip report rewrites it from the folder alone
    out = tmp_path / "again.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert all(f"<section id='{sid}'>" in out.read_text() for sid, _ in SECTIONS)


@pytest.mark.slow
def test_report_renders_in_headless_chromium_without_network(run: Path, tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("no chromium on PATH: install Debian's chromium (apt-get install chromium; .ci/run does)")
    from PIL import Image

    report = run / "report.html"
    dom = dump_dom(report)
    for sid, _ in SECTIONS:
        assert f'id="{sid}"' in dom, sid
    assert dom.count("<img") >= 10
    assert "<mark>" in dom or "No disagreement" in dom  # deciding sentences highlighted in the report text
    assert page_requests(report) == []
    control = tmp_path / "control.html"  # the check can fail: a page loading one remote image is caught
    control.write_text("<!DOCTYPE html><html><body><img src='https://example.com/x.png'></body></html>")
    assert any("example.com" in u for u in page_requests(control))
    png = screenshot(report, tmp_path / "shot.png", width=1200, height=1600)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.02  # text, tables and images: not a blank page
