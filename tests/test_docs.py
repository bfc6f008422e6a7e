"""The documentation: the site builds without warnings, the quick start runs, pages stay in sync.

The site is built with ``mkdocs build --strict`` and the quick-start notebook is executed with
nbclient here, because CI runs the test suite and nothing else.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

import exomiri
from exomiri.cli import STEPS, default_config_text
from exomiri.observation import LRSObservation

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
STEP_PAGES = {
    "wavelength_map": "steps/wavelength-map.md",
    "clean": "steps/clean.md",
    "subtract_background": "steps/background.md",
    "clean_time": "steps/clean-time.md",
    "extract": "steps/extract.md",
    "align": "steps/align.md",
}
#: The steps of the reference tool: their pages show a figure.
ILLUSTRATED = ("wavelength_map", "clean", "subtract_background", "extract", "align")
METHOD_KINDS = {"subtract_background": "background", "extract": "extraction"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out


def test_the_site_builds_with_every_page(site):
    for page in [
        "index",
        "quickstart",
        "cli",
        "sessions",
        "light-curves",
        "comparison",
        "file-format",
        *(p[:-3] for p in STEP_PAGES.values()),
    ]:
        assert (
            (site / page / "index.html").exists()
            or (site / f"{page}.html").exists()
            or (page == "index" and (site / "index.html").exists())
        ), page
    quickstart = (site / "quickstart" / "index.html").read_text()
    assert "reduced.plot.frame()" in quickstart  # the notebook's code became the page
    assert (site / "quickstart.ipynb").exists()  # and the notebook is downloadable


def test_every_step_page_shows_a_figure_that_exists(site):
    for page in (STEP_PAGES[step] for step in ILLUSTRATED):
        html = (site / page[:-3] / "index.html").read_text()
        images = re.findall(r'<img[^>]*src="([^"]+\.png)"', html)
        assert images, f"{page} has no figure"
        for src in images:
            assert (site / page[:-3] / src).resolve().exists(), (page, src)


def test_committed_figures_are_small_and_used():
    text = "".join(p.read_text() for p in DOCS.rglob("*.md"))
    pngs = sorted((DOCS / "img").glob("*.png"))
    assert pngs
    for png in pngs:
        assert png.stat().st_size < 150 * 1024, png
        assert f"img/{png.name}" in text, f"{png.name} is not shown on any page"


@pytest.mark.parametrize("step", STEPS)
def test_step_pages_document_every_parameter(step):
    """Each parameter of the verb and of its built-in methods appears in the step's page."""
    import inspect

    text = (DOCS / STEP_PAGES[step]).read_text()
    names = [
        n
        for n, p in inspect.signature(getattr(LRSObservation, step)).parameters.items()
        if n != "self" and p.kind is not p.VAR_KEYWORD
    ]
    if step in METHOD_KINDS:
        for info in exomiri.methods(METHOD_KINDS[step]).values():
            if info.distribution == "exomiri":
                assert f"`{info.name}`" in text, info.name
                names += list(info.parameters)
    missing = [n for n in names if not re.search(rf"`{n}\b", text)]
    assert not missing, f"{STEP_PAGES[step]} does not document {missing}"


def test_the_cli_page_shows_the_default_configuration():
    text = (DOCS / "cli.md").read_text()
    block = re.search(
        r"The default chain, as `exomiri config` prints it:\n\n```toml\n(.*?)```", text, re.S
    )
    assert block, "docs/cli.md lost its default configuration block"
    assert block.group(1) == default_config_text()


def test_the_quickstart_notebook_runs_and_recovers_the_injected_depths(tmp_path):
    notebook = nbformat.read(DOCS / "quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        "commit docs/quickstart.ipynb without outputs"
    )
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    assert (tmp_path / "quickstart_session.h5").exists()
    (cell,) = [c for c in notebook.cells if "truth" in c.metadata.get("tags", [])]
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    pulls = np.array([float(p) for p in re.findall(r"\(([+-]\d+\.\d+) sigma\)", text)])
    assert pulls.size == 4, text
    assert np.all(np.abs(pulls) < 4.0), text
