"""The command line, run with click's CliRunner on small simulations written as segments."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.table import Table
from click.testing import CliRunner

import exomiri
from exomiri.cli import DEFAULT_CHAIN, Config, load_config, main, run_chain, run_plan
from exomiri.lightcurves import bin_spectra, fit_depth

NINTS = 24


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def fails(*args: str):
    """An exomiri error: exit status 2 and one last line on stderr, no traceback."""
    result = invoke(*args)
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == lines[-1:], result.stderr  # one line, the last one
    assert "Traceback" not in result.output
    return lines[-1]


@pytest.fixture(scope="module")
def segments(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segments")
    obs = exomiri.simulate(nints=NINTS, seed=5, segments=2)
    return obs.write(str(folder / "sim"))


@pytest.fixture(scope="module")
def session(segments, tmp_path_factory):
    """The default chain run by `exomiri reduce` on two segments."""
    path = tmp_path_factory.mktemp("session") / "full.h5"
    result = ok("reduce", *segments, "-o", path)
    assert re.search(r"\[1/6\] wavelength_map", result.stderr)
    assert re.search(r"\[6/6\] align", result.stderr)
    return path


def write(tmp_path, text: str, name: str = "reduce.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------- reduce
def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_reduce_runs_the_default_chain_on_the_segments(segments, session, tmp_path):
    before = [digest(s) for s in segments]
    ok("reduce", *segments, "-o", tmp_path / "again.h5")
    assert [digest(s) for s in segments] == before  # the inputs are never modified
    reduced = exomiri.load(session)
    assert reduced.steps_done == [step for step, _ in DEFAULT_CHAIN]
    assert [s.filename for s in reduced.meta.segments] == [s.rsplit("/", 1)[-1] for s in segments]
    expected = run_chain(exomiri.open(segments))
    np.testing.assert_array_equal(reduced.spectra.flux, expected.spectra.flux)
    np.testing.assert_array_equal(reduced.shifts.y, expected.shifts.y)
    for got, want in zip(reduced.history, expected.history, strict=True):
        assert (got.step, got.method, got.parameters) == (want.step, want.method, want.parameters)


def test_reduce_takes_every_step_parameter_from_the_toml_file(segments, tmp_path):
    config = write(
        tmp_path,
        """
chain = ["wavelength_map", "clean", "subtract_background", "extract", "align"]
[wavelength_map]
source = "calibration"
[clean]
window_heights = [24, 40]
outlier_threshold = 4.5
dq_bits_to_mask = ["DO_NOT_USE", "HOT"]
[subtract_background]
method = "polynomial"
order = 1
regions = [[10, 18], [54, 70]]
smoothing_length = 5
[extract]
method = "box"
aperture_left_width = 3
aperture_right_width = 2.5
[align]
align_spectra = true
x_rows = [150, 380]
""",
    )
    out = tmp_path / "configured.h5"
    ok("reduce", *segments, "-o", out, "--config", config)
    records = {r.step: r for r in exomiri.load(out).history}
    assert list(records) == ["wavelength_map", "clean", "subtract_background", "extract", "align"]
    assert records["wavelength_map"].parameters["source"] == "calibration"
    clean = records["clean"].parameters
    assert clean["window_heights"] == [24, 40] and clean["outlier_threshold"] == 4.5
    assert clean["dq_bits_to_mask"] == [0, 11] and clean["poly_order"] == 4  # the chain's default
    background = records["subtract_background"]
    assert background.method == "polynomial"
    assert background.parameters["order"] == 1
    assert background.parameters["regions"] == [[10, 18], [54, 70]]
    assert background.parameters["smoothing_length"] == 5
    extract = records["extract"]
    assert extract.method == "box"
    assert (
        extract.parameters["aperture_left_width"],
        extract.parameters["aperture_right_width"],
    ) == (3, 2.5)
    assert records["align"].parameters["align_spectra"] is True
    assert records["align"].parameters["x_rows"] == [150, 380]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[clen]\nwindow_heights = [40]\n",
            r"unknown table or key 'clen'\. Did you mean \[clean\]\?",
        ),
        (
            "[clean]\nwindow_height = [40]\n",
            r"\[clean\] has no parameter 'window_height'\. Did you mean 'window_heights'\?",
        ),
        (
            "[extract]\naperture_width = 3\n",
            r"\[extract\] has no parameter 'aperture_width'.*with method 'optimal'",
        ),
        (
            "[extract]\nmethod = 'box'\nvariance = 'err'\n",
            r"has no parameter 'variance'.*with method 'box'",
        ),
        ("[clean]\noutlier_threshold = '5'\n", r"outlier_threshold = '5' should be a number"),
        ("[align]\nalign_spectra = 1\n", r"align_spectra = 1 should be true or false"),
        (
            "[extract]\nmethod = 'nonesuch'\n",
            r"\[extract\] method = 'nonesuch': No extraction method named",
        ),
        ("chain = ['clean', 'extrakt']\n", r"chain = .* must be a non-empty list of step names"),
        ("clean = 4\n", r"clean = 4 must be a table"),
        ("[clean\n", r"is not valid TOML"),
    ],
)
def test_a_bad_configuration_is_refused_before_reading_the_data(tmp_path, text, expected):
    config = write(tmp_path, text)
    line = fails(
        "reduce", tmp_path / "missing_rateints.fits", "-o", tmp_path / "x.h5", "--config", config
    )
    assert str(config) in line
    assert re.search(expected, line), line
    assert not (tmp_path / "x.h5").exists()


def test_a_select_table_keeps_the_chosen_integrations_first(segments, tmp_path):
    config = write(
        tmp_path, "[select]\nintegrations = [2, 22]\ndrop = [5, 6]\n[extract]\nmethod = 'box'\n"
    )
    out = tmp_path / "selected.h5"
    result = ok("reduce", *segments, "-o", out, "--config", config)
    assert "[1/7] select" in result.stderr
    obs = exomiri.load(out)
    assert obs.steps_done[:2] == ["select", "wavelength_map"]
    expected = [n for n in range(3, 23) if n not in (6, 7)]  # 1-based integration numbers
    np.testing.assert_array_equal(obs.integration_numbers, expected)
    reference = exomiri.open(segments).select(
        np.isin(np.arange(NINTS), np.arange(2, 22)) & ~np.isin(np.arange(NINTS), [5, 6])
    )
    reference = run_plan(reference, load_config(config).plan()[1:])
    np.testing.assert_array_equal(obs.spectra.flux, reference.spectra.flux)

    # skip_hours cuts on the integration start times
    full = exomiri.open(segments)
    hours = float((full.times[8] - full.int_times["int_start_BJD_TDB"][0]) * 24)
    skip = write(
        tmp_path,
        f"chain = ['select', 'wavelength_map']\n[select]\nskip_hours = {hours}\n",
        "skip.toml",
    )
    ok("reduce", *segments, "-o", tmp_path / "skip.h5", "--config", skip)
    assert exomiri.load(tmp_path / "skip.h5").integration_numbers[0] == 9

    bad = write(tmp_path, "[select]\ndrop = [99]\n", "bad.toml")
    assert "[select] drop = [99]: indices must lie in 0..23" in fails(
        "reduce", *segments, "-o", tmp_path / "x.h5", "--config", bad
    )
    bad = write(tmp_path, "[select]\nintegrations = [1]\n", "bad2.toml")
    assert "must be [start, stop]" in fails(
        "reduce", *segments, "-o", tmp_path / "x.h5", "--config", bad
    )
    # a resumed session replays the recorded selection
    ok("resume", out, "--from", "extract", "-o", tmp_path / "again.h5")
    np.testing.assert_array_equal(
        exomiri.load(tmp_path / "again.h5").spectra.flux, obs.spectra.flux
    )


def test_reduce_in_chunks_gives_the_in_memory_result(segments, tmp_path):
    config = write(tmp_path, "[extract]\nmethod = 'box'\n")
    whole, chunked = tmp_path / "whole.h5", tmp_path / "chunked.h5"
    ok("reduce", *segments, "-o", whole, "--config", config)
    result = ok("reduce", *segments, "-o", chunked, "--config", config, "--chunks", "10")
    assert "[6/6] align" in result.stderr
    a, b = exomiri.load(whole), exomiri.load(chunked)
    assert b.steps_done == a.steps_done
    assert b.history[4].method == "box"
    np.testing.assert_array_equal(b.data, a.data)
    np.testing.assert_array_equal(b.spectra.flux, a.spectra.flux)
    np.testing.assert_allclose(b.shifts.x, a.shifts.x, rtol=1e-10, atol=1e-12)  # summation order
    bad = write(tmp_path, 'chain = ["wavelength_map", "align", "extract"]\n', "bad.toml")
    line = fails("reduce", *segments, "-o", tmp_path / "x.h5", "--config", bad, "--chunks", "10")
    assert "align must be the last step" in line


def test_reduce_names_a_missing_segment_or_output_folder(segments, tmp_path):
    line = fails("reduce", tmp_path / "nope_rateints.fits", "-o", tmp_path / "x.h5")
    assert "nope_rateints.fits: no such file" in line
    result = invoke("reduce", *segments, "-o", tmp_path / "absent" / "x.h5")
    assert result.exit_code == 2
    assert "-o " in result.stderr and "does not exist" in result.stderr
    assert "[1/6]" not in result.stderr  # refused before the chain ran


def test_the_printed_default_configuration_is_the_default_chain(segments, session, tmp_path):
    text = ok("config").stdout
    assert tomllib.loads(text)["chain"] == [step for step, _ in DEFAULT_CHAIN]
    assert [p.params for p in Config().plan()] == [params for _, params in DEFAULT_CHAIN]
    out = tmp_path / "printed.h5"
    ok("reduce", *segments, "-o", out, "--config", write(tmp_path, text))
    for got, want in zip(exomiri.load(out).history, exomiri.load(session).history, strict=True):
        assert (got.step, got.method, got.parameters) == (want.step, want.method, want.parameters)
    # a configured file comes back filled in, and reads back the same
    custom = write(tmp_path, "[extract]\nmethod = 'box'\naperture_left_width = 2\n", "custom.toml")
    filled = ok("config", "--config", custom).stdout
    assert 'method = "box"' in filled and "aperture_left_width = 2" in filled
    assert "variance" not in filled
    again = load_config(write(tmp_path, filled, "filled.toml")).plan()
    assert again[4].params == {
        **load_config(custom).plan()[4].params,
        "aperture_right_width": 4,
        "dq_bits_to_mask": [0],
        "trace_position": "trace",
    }


# ------------------------------------------------------------------- resume
def test_resume_from_extract_reproduces_the_uninterrupted_run(session, tmp_path):
    out = tmp_path / "resumed.h5"
    result = ok("resume", session, "--from", "extract", "-o", out)
    assert "[1/2] extract" in result.stderr and "[2/2] align" in result.stderr
    before, after = exomiri.load(session), exomiri.load(out)
    np.testing.assert_array_equal(after.spectra.flux, before.spectra.flux)
    np.testing.assert_array_equal(after.spectra.flux_err, before.spectra.flux_err)
    np.testing.assert_array_equal(after.shifts.x, before.shifts.x)
    assert after.steps_done == [*before.steps_done, "extract", "align"]
    assert after.history[-2].parameters == before.history[-2].parameters
    assert after.history[-2].method == "optimal"


def test_resume_continues_a_session_saved_part_way(segments, session, tmp_path):
    partial = tmp_path / "partial.h5"
    config = write(
        tmp_path, 'chain = ["wavelength_map", "clean", "subtract_background", "clean"]\n'
    )
    ok("reduce", *segments, "-o", partial, "--config", config)
    assert exomiri.load(partial).spectra is None
    assert "needs spectra" in fails("export", partial, "--to", tmp_path / "x.nc")
    result = ok("resume", partial)  # no --from: the steps the chain has left
    assert "[1/2] extract" in result.stderr
    continued, full = exomiri.load(partial), exomiri.load(session)
    assert continued.steps_done == full.steps_done
    np.testing.assert_array_equal(continued.spectra.flux, full.spectra.flux)
    np.testing.assert_array_equal(continued.shifts.y, full.shifts.y)
    line = fails("resume", partial)  # nothing left to do now
    assert "every step of the chain is done" in line and "--from extract" in line


def test_resume_parameters_can_be_overridden(session, tmp_path):
    config = write(
        tmp_path,
        "[extract]\nmethod = 'box'\naperture_left_width = 2\n[align]\nalign_spectra = true\n",
    )
    out = tmp_path / "box.h5"
    ok("resume", session, "--from", "extract", "--config", config, "-o", out)
    resumed = exomiri.load(out)
    record = resumed.history[-2]
    assert record.method == "box"
    assert record.parameters["aperture_left_width"] == 2
    assert "variance" not in record.parameters  # the optimal method's own parameters are gone
    expected = (
        exomiri.load(session).extract(method="box", aperture_left_width=2).align(align_spectra=True)
    )
    np.testing.assert_array_equal(resumed.spectra.flux, expected.spectra.flux)
    assert resumed.spectra.aligned


def test_time_domain_cleaning_in_the_chain_and_on_resume(segments, tmp_path):
    config = write(
        tmp_path,
        'chain = ["wavelength_map", "clean", "subtract_background", "clean_time", "clean",'
        ' "extract", "align"]\n[clean_time]\nwindow = 7\nthreshold = 4.5\n',
    )
    out = tmp_path / "time.h5"
    ok("reduce", *segments, "-o", out, "--config", config)
    obs = exomiri.load(out)
    records = [r for r in obs.history if r.step == "clean_time"]
    assert [(r.parameters["window"], r.parameters["threshold"]) for r in records] == [(7, 4.5)]
    # clean_time on="pixels" changed the cube: it cannot be repeated ...
    assert "It can resume from extract, align" in fails("resume", out, "--from", "clean_time")
    # ... but after extract it cleans spectra, which a repeated extract rebuilds
    spectra = write(
        tmp_path,
        'chain = ["wavelength_map", "clean", "subtract_background", "clean", "extract",'
        ' "clean_time", "align"]\n[clean_time]\non = "spectra"\nwindow = 7\n',
        "spectra.toml",
    )
    out2 = tmp_path / "spectra.h5"
    ok("reduce", *segments, "-o", out2, "--config", spectra)
    ok("resume", out2, "--from", "extract", "-o", tmp_path / "again.h5")
    before, again = exomiri.load(out2), exomiri.load(tmp_path / "again.h5")
    assert again.steps_done[-3:] == ["extract", "clean_time", "align"]
    np.testing.assert_array_equal(again.spectra.flux, before.spectra.flux)


def test_resume_refuses_steps_whose_input_cube_is_gone(session, tmp_path):
    line = fails("resume", session, "--from", "clean", "-o", tmp_path / "x.h5")
    assert "holds only its latest cube" in line
    assert "It can resume from extract, align" in line
    assert not (tmp_path / "x.h5").exists()


def test_resume_names_the_distribution_of_a_method_that_is_not_installed(session, tmp_path):
    obs = exomiri.load(session)
    history = list(obs.history)
    history[4] = dataclasses.replace(
        history[4], method="fancy", provider="exomiri-fancy", provider_version="2.1.0"
    )
    foreign = tmp_path / "foreign.h5"
    dataclasses.replace(obs, history=tuple(history)).save(foreign)
    line = fails("resume", foreign, "--from", "extract")
    assert "'fancy' from exomiri-fancy==2.1.0, which is not installed" in line
    assert 'pip install "exomiri-fancy==2.1.0"' in line
    assert "[extract] method = 'optimal'" in line
    # choosing an installed method in a configuration file gets past it
    config = write(tmp_path, "[extract]\nmethod = 'optimal'\n")
    ok("resume", foreign, "--from", "extract", "--config", config)
    np.testing.assert_array_equal(exomiri.load(foreign).spectra.flux, obs.spectra.flux)


# --------------------------------------------------------------------- info
def test_info_prints_what_the_session_holds(session):
    out = ok("info", session).stdout
    obs = exomiri.load(session)
    nints, nrows, ncols = obs.shape
    assert f"shape      {nints} integrations x {nrows} rows x {ncols} columns" in out
    assert f"target     {obs.meta.target}" in out
    assert "subarray   SLITLESSPRISM (SUBSTRT1=1, SUBSTRT2=529)" in out
    assert f"segments   {len(obs.meta.segments)}" in out
    for s in obs.meta.segments:
        assert f"{s.filename}  integrations {s.first}-{s.last}" in out
    steps = re.findall(r"^  (\d+)\. (\S+)\s+([\d.]+) s", out, flags=re.M)
    assert [(int(k), name) for k, name, _ in steps] == [
        (k, f"{r.step}[{r.method}]" if r.method else r.step) for k, r in enumerate(obs.history, 1)
    ]
    assert [float(d) for _, _, d in steps] == [round(r.duration_s, 2) for r in obs.history]
    assert "       outlier_threshold = 5.0" in out
    assert "       method" not in out  # the method is in the step's name
    assert f"spectra.flux           ({nints}, {nrows}) float64" in out
    assert f"data                   ({nints}, {nrows}, {ncols}) float32" in out
    assert "products   background, shifts, spectra" in out


def test_info_refuses_a_file_that_is_not_a_session(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not HDF5")
    assert "could not be read as an exomiri session" in fails("info", path)
    assert "no such session file" in fails("info", tmp_path / "absent.h5")


# ------------------------------------------------------------------- export
def test_export_writes_light_curves_that_load(session, tmp_path):
    obs = exomiri.load(session)
    full = tmp_path / "full.nc"
    ok("export", session, "--to", full)
    with xr.open_dataset(full, engine="h5netcdf") as ds:
        np.testing.assert_array_equal(ds.flux.values, obs.spectra.flux)
        np.testing.assert_array_equal(ds.x_shift.values, obs.shifts.x)

    binned = tmp_path / "binned.nc"
    ok("export", session, "--to", binned, "--bin-width", "1.0", "--range", "5", "11")
    with xr.open_dataset(binned, engine="h5netcdf") as ds:
        np.testing.assert_allclose(ds.wavelength_lower.values, np.arange(5.0, 11.0))
        expected = bin_spectra(obs.spectra, np.arange(5.0, 11.5, 1.0))
        np.testing.assert_allclose(ds.flux.values, expected.flux)

    table_path = tmp_path / "r20.ecsv"
    ok("export", session, "--to", table_path, "--resolution", "20")
    expected = obs.light_curves(resolution=20)
    table = Table.read(table_path, format="ascii.ecsv")
    assert len(table) == NINTS
    np.testing.assert_allclose(table["flux"].value, expected.flux.values)
    np.testing.assert_allclose(table.meta["wavelength_micron"], expected.wavelength.values)

    ok("export", session, "--to", tmp_path / "p.nc", "--pixels", "10")
    with xr.open_dataset(tmp_path / "p.nc", engine="h5netcdf") as ds:
        assert (ds.n_rows.values[:-1] == 10).all()


def test_export_refuses_two_binnings_and_unknown_formats(session, tmp_path):
    result = invoke(
        "export", session, "--to", tmp_path / "x.nc", "--pixels", "4", "--resolution", "10"
    )
    assert result.exit_code == 2 and "Give one of" in result.stderr
    assert "use a file name ending in .nc or .ecsv" in fails(
        "export", session, "--to", tmp_path / "x.csv"
    )
    line = fails("export", session, "--to", tmp_path / "absent" / "x.nc")
    assert f"the folder {tmp_path / 'absent'} does not exist" in line
    assert "--bin-width -1.0 must be a positive width" in fails(
        "export", session, "--to", tmp_path / "x.nc", "--bin-width", "-1"
    )


# ------------------------------------------------------------------ plugins
def test_plugins_lists_what_is_installed():
    listed = exomiri.list_plugins()
    out = ok("plugins").stdout
    for plugin in listed:
        assert f"{plugin['name']}  ({plugin['distribution']}=={plugin['version']})" in out
        for names in plugin["methods"].values():
            if names:
                assert ", ".join(names) in out
    assert json.loads(ok("plugins", "--json").stdout) == listed


# --------------------------------------------------------------------- demo
def test_demo_recovers_the_injected_spectrum_and_writes_figures(tmp_path):
    result = ok("demo", "--nints", "60", "--seed", "3", "--out", tmp_path)
    session = tmp_path / "demo_session.h5"
    obs = exomiri.load(session)
    assert obs.nints == 60 and obs.steps_done == [step for step, _ in DEFAULT_CHAIN]
    for name in (
        "frame",
        "cleaning_map",
        "background",
        "spectra",
        "white_light",
        "shifts",
        "light_curves",
        "cleaning",
    ):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = re.findall(
        r"^\s*([\d.]+)-([\d.]+)\s+(-?\d+)\s+(\d+)\s+(-?\d+)\s+(-?[\d.]+)$",
        result.stdout,
        flags=re.M,
    )
    assert len(rows) == 14
    edges = np.arange(5.0, 12.0 + 1e-9, 0.5)
    np.testing.assert_allclose([float(r[0]) for r in rows], edges[:-1])
    binned = bin_spectra(obs.spectra, edges)
    depth, depth_err, _ = fit_depth(
        binned.flux,
        binned.flux_err,
        obs.truth.transit_shape,
        obs.times,
        regressors=np.column_stack([obs.shifts.x, obs.shifts.y]),
    )
    # the printed numbers are the session's
    np.testing.assert_allclose([float(r[2]) for r in rows], np.round(depth * 1e6), atol=1)
    np.testing.assert_allclose([float(r[3]) for r in rows], np.round(depth_err * 1e6), atol=1)
    # and the recovered depths agree with the injected ones within their errors
    pulls = np.array([float(r[5]) for r in rows])
    assert np.all(np.abs(pulls) < 4.0), pulls
    assert np.sum(pulls**2) < 14 + 5 * np.sqrt(2 * 14), pulls
