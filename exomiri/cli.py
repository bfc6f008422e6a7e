"""The ``exomiri`` command line.

``exomiri demo``      simulate an observation, reduce it, compare with the truth, write figures
``exomiri reduce``    the chain on ``*_rateints.fits`` segments, parameters from a TOML file
``exomiri resume``    re-run a saved session from a step, with its recorded parameters
``exomiri info``      what a session holds: shape, segments, steps, products
``exomiri export``    light curves to netCDF or ECSV
``exomiri plugins``   installed plugins and the methods they provide
``exomiri config``    the default configuration, or a checked configuration file, as TOML

The chain is data (:data:`DEFAULT_CHAIN`), turned into a list of
:class:`PlannedStep` by :func:`load_config` (``reduce``) or
:func:`resume_plan` (``resume``) and run by :func:`run_plan`.  Errors raised
by exomiri are printed as one line and exit with status 2.
"""

from __future__ import annotations

import difflib
import inspect
import json
import sys
import time
import tomllib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from .chain import DEFAULT_CHAIN
from .exceptions import ExomiriError, InputError, UnknownMethodError
from .io import output_folder

__all__ = [
    "DEFAULT_CHAIN",
    "STEPS",
    "Config",
    "PlannedStep",
    "default_config_text",
    "load_config",
    "main",
    "resume_plan",
    "run_chain",
    "run_plan",
]

#: The steps a configuration file may name, in chain order.
STEPS = ("wavelength_map", "clean", "subtract_background", "clean_time", "extract", "align")
#: Tables a configuration may hold: the steps, and ``select`` (which integrations to keep).
TABLES = ("select", *STEPS)
#: Steps that can be repeated on a saved session: they leave the cube as it is (or, ``select``
#: and ``drop``, keep integrations by number, which gives the same on a second run).  Any other
#: step (``clean``, ``subtract_background``, a step this version does not know) changed the cube,
#: and a session holds only its latest cube.
REPLAYABLE = frozenset({"wavelength_map", "extract", "align", "select", "drop"})


def _replayable(record) -> bool:
    """Whether repeating ``record`` on a saved session gives what the first run gave.

    ``clean_time(on="spectra")`` only changes the spectra, which a repeated ``extract``
    rebuilds, so it is repeatable too; ``clean_time(on="pixels")`` changed the cube.
    """
    if record.step == "clean_time":
        return record.parameters.get("on") == "spectra"
    return record.step in REPLAYABLE
#: Steps whose ``method`` is a registered plugin method, and the method kind.
METHOD_KINDS = {"subtract_background": "background", "extract": "extraction"}
#: Names of the figures ``exomiri demo`` writes (the observation's ``plot`` accessor).
DEMO_FIGURES = (
    "frame",
    "cleaning_map",
    "background",
    "spectra",
    "white_light",
    "shifts",
    "light_curves",
    "cleaning",
)

_DEFAULT_PARAMS = dict(DEFAULT_CHAIN)
#: Parameters a step records for information only; they are not arguments of the verb.
_RECORD_ONLY = {"wavelength_map": {"calibration", "reference"}}
#: What a parameter left at None means, for the TOML listing.
_NONE_MEANS = {"smoothing_length": "no smoothing", "integrations": "all"}
#: Parameters of the ``[select]`` table: an index range [start, stop) of the integrations as
#: read, hours to skip at the start (the detector settles), and indices of integrations to drop.
_SELECT_PARAMS: dict[str, Any] = {"integrations": None, "skip_hours": 0.0, "drop": []}


# ------------------------------------------------------------------ the chain
@dataclass(frozen=True)
class PlannedStep:
    """One step to run: the verb, its keyword arguments, and where they came from."""

    step: str
    params: dict[str, Any]
    origin: str = "default chain"

    @property
    def method(self) -> str | None:
        return self.params.get("method")


def _verb_parameters(step: str) -> dict[str, Any]:
    """The keyword parameters of ``LRSObservation.<step>`` and their defaults."""
    from .observation import LRSObservation

    signature = inspect.signature(getattr(LRSObservation, step))
    return {
        name: p.default
        for name, p in signature.parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def _method_parameters(step: str, method: str) -> dict[str, Any]:
    from .plugins import get_method

    return dict(get_method(METHOD_KINDS[step], method).parameters)


def _accepted(step: str, method: str | None) -> dict[str, Any]:
    """Every parameter ``step`` accepts with ``method``, and its default."""
    if step == "select":
        return dict(_SELECT_PARAMS)
    params = _verb_parameters(step)
    params.update(_DEFAULT_PARAMS.get(step, {}))
    if step in METHOD_KINDS and method is not None:
        params.update(_method_parameters(step, method))
    return params


def run_plan(
    obs,
    plan: Sequence[PlannedStep],
    progress: Callable[[int, int, PlannedStep, Any, float | None], None] | None = None,
):
    """Run ``plan`` on ``obs`` and return the new observation.

    ``progress(i, n, planned, obs, seconds)`` is called before each step
    (``seconds`` None), after it (with the step's duration), and when it
    fails (``obs`` None, ``seconds`` -1).
    """
    n = len(plan)
    for i, planned in enumerate(plan, 1):
        if progress is not None:
            progress(i, n, planned, obs, None)
        t0 = time.perf_counter()
        try:
            obs = _apply(obs, planned)
        except Exception as exc:
            exc.add_note(f"in step {i}/{n} {planned.step} (parameters from {planned.origin})")
            if progress is not None:
                progress(i, n, planned, None, -1.0)
            raise
        if progress is not None:
            progress(i, n, planned, obs, time.perf_counter() - t0)
    return obs


def _apply(obs, planned: PlannedStep):
    if planned.step == "select":
        return obs.select(_selection(obs, planned.params))
    return getattr(obs, planned.step)(**planned.params)


def _selection(obs, params: dict[str, Any]) -> np.ndarray:
    """The integrations a ``select`` step keeps, as a boolean mask."""
    if "integration_numbers" in params:  # a recorded selection: [first, last] runs of numbers
        numbers = obs.integration_numbers
        keep = np.zeros(obs.nints, dtype=bool)
        for first, last in params["integration_numbers"]:
            keep |= (numbers >= first) & (numbers <= last)
        return keep
    keep = np.ones(obs.nints, dtype=bool)
    if params.get("integrations") is not None:
        start, stop = params["integrations"]
        keep[:] = False
        keep[slice(start, stop)] = True
    drop = np.asarray(params.get("drop") or [], dtype=np.int64)
    if drop.size and (drop.min() < 0 or drop.max() >= obs.nints):
        raise InputError(
            f"[select] drop = {drop.tolist()}: indices must lie in 0..{obs.nints - 1} (the "
            "integrations as read, counted from 0)."
        )
    keep[drop] = False
    skip = float(params.get("skip_hours") or 0.0)
    if skip > 0:
        start_time = obs.int_times["int_start_BJD_TDB"][0]
        keep &= obs.times >= start_time + skip / 24.0
    return keep


def run_chain(obs):
    """The documented chain (:data:`DEFAULT_CHAIN`): clean, background, clean, extract, align."""
    return run_plan(obs, Config().plan())


# ------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Config:
    """A chain of steps and per-step parameters (one TOML table per step)."""

    chain: tuple[str, ...] = tuple(step for step, _ in DEFAULT_CHAIN)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: str | None = None

    @property
    def origin(self) -> str:
        return f"{self.path}" if self.path else "default chain"

    def params_for(self, step: str, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` parameters overridden by this configuration's table for ``step``."""
        table = self.tables.get(step, {})
        params = dict(base)
        if step in METHOD_KINDS and "method" in table and table["method"] != base.get("method"):
            # another method: the old method's own parameters no longer apply
            verb = _verb_parameters(step)
            params = {k: v for k, v in params.items() if k in verb}
        params.update(table)
        return params

    def plan(self, steps: Sequence[str] | None = None) -> list[PlannedStep]:
        """The planned steps (the whole chain, or ``steps``) with default and configured parameters."""
        out = []
        for step in self.chain if steps is None else steps:
            origin = self.origin if step in self.tables else "default chain"
            out.append(
                PlannedStep(step, self.params_for(step, _DEFAULT_PARAMS.get(step, {})), origin)
            )
        return out


def _type_problem(default: Any, value: Any) -> str | None:
    """Why ``value`` cannot stand where ``default`` does, or None."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, list | tuple):
        return None if isinstance(value, list) else "a list"
    return None


def _check_select(path: str, table: dict[str, Any]) -> None:
    integrations = table.get("integrations")
    if integrations is not None and not (
        isinstance(integrations, list)
        and len(integrations) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in integrations)
    ):
        raise InputError(
            f"{path}: [select] integrations = {integrations!r} must be [start, stop], integer "
            "indices of the integrations as read (stop excluded), e.g. integrations = [100, 5000]."
        )
    drop = table.get("drop", [])
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in drop):
        raise InputError(
            f"{path}: [select] drop = {drop!r} must be a list of integer indices, e.g. drop = [3, 17]."
        )
    if table.get("skip_hours", 0.0) < 0:
        raise InputError(
            f"{path}: [select] skip_hours = {table['skip_hours']!r} must be >= 0 (hours skipped "
            "at the start of the observation)."
        )


def _check_table(path: str, step: str, table: dict[str, Any]) -> None:
    method = table.get("method", _DEFAULT_PARAMS.get(step, {}).get("method"))
    if step in METHOD_KINDS:
        if not isinstance(method, str):
            raise InputError(
                f"{path}: [{step}] method = {method!r} must be a method name; "
                f"see `exomiri plugins`, e.g. method = {_DEFAULT_PARAMS[step]['method']!r}."
            )
        try:
            accepted = _accepted(step, method)
        except ExomiriError as exc:
            raise type(exc)(f"{path}: [{step}] method = {method!r}: {exc}") from None
    else:
        accepted = _accepted(step, None)
    for key, value in table.items():
        if key not in accepted:
            close = difflib.get_close_matches(key, list(accepted), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            with_method = f" with method {method!r}" if step in METHOD_KINDS else ""
            raise InputError(
                f"{path}: [{step}] has no parameter {key!r}.{hint} Parameters of {step}"
                f"{with_method}: {', '.join(accepted)}."
            )
        problem = _type_problem(accepted[key], value)
        if problem:
            raise InputError(
                f"{path}: [{step}] {key} = {value!r} should be {problem} "
                f"(default {_toml_value(accepted[key])})."
            )
    if step == "select":
        _check_select(path, table)


def load_config(path: str | Path | None = None) -> Config:
    """Read and check a TOML configuration; None gives the default chain.

    Top-level key ``chain`` (optional): the steps in order.  One table per
    step (``[wavelength_map]``, ``[clean]``, ``[subtract_background]``,
    ``[extract]``, ``[align]``) holds that step's parameters, applied to every
    occurrence of the step.  An optional ``[select]`` table (``integrations``,
    ``skip_hours``, ``drop``) keeps some integrations; it runs first unless
    ``chain`` places ``"select"`` elsewhere.  Unknown tables, unknown parameters and values of
    the wrong type are refused with an :class:`~exomiri.InputError` naming
    the file, the table and the key.
    """
    if path is None:
        return Config()
    path = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such configuration file. Check the path.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid TOML ({exc}). Fix the line it names.") from None
    chain = data.pop("chain", [step for step, _ in DEFAULT_CHAIN])
    if (
        not isinstance(chain, list)
        or not chain
        or not all(isinstance(s, str) and s in TABLES for s in chain)
    ):
        raise InputError(
            f"{path}: chain = {chain!r} must be a non-empty list of step names from "
            f"{', '.join(TABLES)}, e.g. chain = {_toml_value([s for s, _ in DEFAULT_CHAIN])}."
        )
    tables: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        if name not in TABLES:
            close = difflib.get_close_matches(name, TABLES, n=1)
            hint = f" Did you mean [{close[0]}]?" if close else ""
            raise InputError(
                f"{path}: unknown table or key {name!r}.{hint} A configuration holds 'chain' "
                f"and the tables {', '.join(f'[{s}]' for s in TABLES)}."
            )
        if not isinstance(table, dict):
            raise InputError(
                f"{path}: {name} = {table!r} must be a table of parameters: write [{name}] on its "
                "own line and the parameters below it."
            )
        _check_table(path, name, table)
        tables[name] = table
    if "select" in tables and "select" not in chain:
        chain = ["select", *chain]
    return Config(chain=tuple(chain), tables=tables, path=path)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def default_config_text(config: Config | None = None) -> str:
    """``config`` (default: the default chain) as a TOML file with every parameter spelt out.

    Parameters whose default depends on the data (None) appear as comments.
    """
    config = config or Config()
    lines = [
        "# exomiri reduce configuration: the steps in order, then one table per step.",
        "# Each table applies to every occurrence of its step; every key is optional.",
        f"chain = {_toml_value(list(config.chain))}",
    ]
    if "select" not in config.chain:
        lines += [
            "",
            "# [select]              (optional: which integrations to keep; runs first)",
            "# integrations = [100, 5000]   # index range [start, stop) of the integrations as read",
            "# skip_hours = 1.0             # skip the first hour",
            "# drop = [3, 17]               # indices of integrations to drop",
        ]
    for step in TABLES:
        if step == "select" and "select" not in config.chain:
            continue
        params = config.params_for(step, _DEFAULT_PARAMS.get(step, {}))
        accepted = _accepted(step, params.get("method"))
        lines.append("")
        if step not in config.chain:
            lines.append(f'# {step} is not in the chain: add "{step}" to chain to run it.')
        lines.append(f"[{step}]")
        for key, default in accepted.items():
            value = params.get(key, default)
            if value is None:
                meaning = _NONE_MEANS.get(key, "set from the subarray geometry")
                lines.append(f"# {key} = ...  (default: {meaning})")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- resume
def _is_digest(value: Any) -> bool:
    if isinstance(value, dict):
        return "array" in value or any(_is_digest(v) for v in value.values())
    if isinstance(value, list):
        return any(_is_digest(v) for v in value)
    return False


def _replay(record, number: int, config: Config, session: str, notes: list[str]) -> PlannedStep:
    """The planned step that repeats history record ``number`` (1-based)."""
    from .plugins import methods

    origin = f"{session} step {number}"
    if record.step in ("select", "drop"):
        return PlannedStep(
            "select", {"integration_numbers": record.parameters["integration_numbers"]}, origin
        )
    step = record.step
    table = config.tables.get(step, {})
    params = dict(record.parameters)
    method = None
    if step in METHOD_KINDS:
        kind = METHOD_KINDS[step]
        method = table.get("method", record.method)
        if method == record.method:
            installed = methods(kind).get(method)
            if installed is None:
                default = _DEFAULT_PARAMS[step]["method"]
                suggestion = default if default in methods(kind) else next(iter(methods(kind)), "")
                raise UnknownMethodError(
                    f"{session}: step {number} ({step}) used the {kind} method {method!r} from "
                    f"{record.provider}=={record.provider_version}, which is not installed. "
                    f'Install it (pip install "{record.provider}=={record.provider_version}"), or '
                    f"choose an installed method in a configuration file: [{step}] method = "
                    f"{suggestion!r} (see `exomiri plugins`)."
                )
            if (installed.distribution, installed.version) != (
                record.provider,
                record.provider_version,
            ):
                notes.append(
                    f"step {number} ({step}) used {method!r} from {record.provider}=="
                    f"{record.provider_version}; now running it from {installed.distribution}=="
                    f"{installed.version}"
                )
        else:
            verb = _verb_parameters(step)
            params = {k: v for k, v in params.items() if k in verb}
        params["method"] = method
    accepted = _accepted(step, method)
    for key in sorted(set(params) - set(accepted)):
        if key not in _RECORD_ONLY.get(step, ()):
            notes.append(
                f"step {number} ({step}): recorded parameter {key!r} is not accepted now; ignored"
            )
        del params[key]
    params.update(table)
    for key, value in params.items():
        if _is_digest(value):
            raise InputError(
                f"{session}: step {number} ({step}) was given an array for {key!r}; the session "
                f"keeps only its digest. Set {key} in a configuration file ([{step}] {key} = ...)."
            )
    return PlannedStep(step, params, origin + (f" and {config.path}" if table else ""))


def resume_plan(obs, from_step: str | None, config: Config | None = None, session: str = "session"):
    """The steps that re-run ``obs`` from ``from_step``; returns ``(plan, notes)``.

    The history's records from the first re-runnable ``from_step`` on are
    repeated with their recorded parameters (overridden by ``config``'s
    tables), then the chain's steps that the history has not reached yet
    (``config.chain`` when the history is a beginning of it).  With
    ``from_step=None`` only those missing steps run.  A session holds only
    its latest cube, so a step cannot be re-run when it, or a later step,
    changed the cube (``clean``, ``subtract_background``; see :data:`REPLAYABLE`).
    """
    config = config or Config()
    history = obs.history
    done = [r.step for r in history if r.step in STEPS]
    chain = [s for s in config.chain if s in STEPS]
    remainder = chain[len(done) :] if done == chain[: len(done)] else []
    n = len(history)

    def rerunnable(p: int) -> bool:
        return all(_replayable(r) for r in history[p:])

    if from_step is None:
        if not remainder:
            raise InputError(
                f"{session}: every step of the chain is done ({', '.join(done) or 'none'}); "
                "name the step to re-run with --from, e.g. --from extract."
            )
        start = n
    else:
        starts = [p for p, r in enumerate(history) if r.step == from_step and rerunnable(p)]
        starts += [n + k for k, s in enumerate(remainder) if s == from_step]
        if not starts:
            possible = [
                s
                for s in STEPS
                if s in remainder
                or any(r.step == s and rerunnable(p) for p, r in enumerate(history))
            ]
            if any(r.step == from_step for r in history):
                first = next(p for p, r in enumerate(history) if r.step == from_step)
                changed = [
                    f"{p + 1} ({r.step})"
                    for p, r in enumerate(history)
                    if p >= first and not _replayable(r)
                ]
                why = (
                    f"the session holds only its latest cube, and step(s) {', '.join(changed)} "
                    f"changed it since {from_step} ran"
                )
            else:
                why = f"it has no {from_step} step and the chain has none left to run"
            raise InputError(
                f"{session}: cannot resume from {from_step}: {why}. It can resume from "
                f"{', '.join(possible) or 'no step'}; to change an earlier step, run `exomiri "
                "reduce` on the segments again."
            )
        start = starts[0]
    notes: list[str] = []
    plan = [_replay(history[p], p + 1, config, session, notes) for p in range(start, n)]
    plan += config.plan(remainder[max(0, start - n) :])
    return plan, notes


# ------------------------------------------------------------- command line
class _Failure(click.ClickException):
    """An exomiri error shown as one line, exit status 2."""

    exit_code = 2

    def __init__(self, exc: BaseException) -> None:
        text = " ".join([str(exc), *(f"({note})" for note in getattr(exc, "__notes__", ()))])
        super().__init__(" ".join(text.split()))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {' '.join(str(message).split())}", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except ExomiriError as exc:
                raise _Failure(exc) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="exomiri")
def main() -> None:
    """Spectral time series from JWST MIRI LRS slitless observations.

    Errors in the input print one line and exit with status 2.
    """


def _progress(i: int, n: int, planned: PlannedStep, obs: Any, seconds: float | None) -> None:
    """One stderr line per step: its number, name and method, then duration and diagnostics."""
    if seconds is None:
        click.echo(f"[{i}/{n}] {planned.step:<20s} {planned.method or '':<10s}", err=True, nl=False)
        return
    if obs is None:
        click.echo(" failed", err=True)
        return
    record = obs.history[-1]
    shown = []
    for key, value in list(record.diagnostics.items())[:3]:
        if isinstance(value, float):
            value = f"{value:.4g}"
        if isinstance(value, int | str):
            shown.append(f"{key}={value}")
    click.echo(f" {seconds:7.2f} s  {' '.join(shown)}", err=True)


def _write_figures(obs, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name in DEMO_FIGURES:
        figure = getattr(obs.plot, name)()
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written


@main.command()
@click.option("--nints", default=1000, show_default=True, help="Integrations to simulate.")
@click.option("--seed", default=0, show_default=True, help="Random seed of the simulation.")
@click.option(
    "--out",
    default="exomiri-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the session and figures.",
)
def demo(nints: int, seed: int, out: str) -> None:
    """Simulate an observation with a known transit, reduce it, and compare with the truth."""
    import exomiri
    from exomiri.lightcurves import bin_spectra, fit_depth

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    obs = exomiri.simulate(nints=nints, seed=seed)
    click.echo(f"simulated   {obs}  ({time.perf_counter() - t0:.1f} s)")
    reduced = run_chain(obs)
    for record in reduced.history:
        click.echo(f"  {record.step:<20s} {record.method or '':<10s} {record.duration_s:6.2f} s")
    t1 = time.perf_counter()
    session = reduced.save(folder / "demo_session.h5")
    click.echo(f"session     {session}  ({time.perf_counter() - t1:.1f} s)")
    t1 = time.perf_counter()
    figures = _write_figures(reduced, folder)
    click.echo(
        f"figures     {', '.join(p.name for p in figures)}  ({time.perf_counter() - t1:.1f} s)"
    )

    truth = reduced.truth
    edges = np.arange(5.0, 12.0 + 1e-9, 0.5)
    binned = bin_spectra(reduced.spectra, edges)
    shifts = np.column_stack([reduced.shifts.x, reduced.shifts.y])
    depth, depth_err, _ = fit_depth(
        binned.flux, binned.flux_err, truth.transit_shape, reduced.times, regressors=shifts
    )
    click.echo("")
    click.echo(
        "Transmission spectrum (injected transit shape, baseline linear in time and x/y shifts)"
    )
    click.echo(
        f"{'wavelength/um':>14s} {'recovered/ppm':>14s} {'+/-':>7s} {'injected/ppm':>13s} {'sigma':>6s}"
    )
    injected = truth.binned_depth(reduced.spectra.wavelength, edges)
    for k in range(len(depth)):
        pull = (depth[k] - injected[k]) / depth_err[k]
        click.echo(
            f"{edges[k]:6.2f}-{edges[k + 1]:<6.2f} {depth[k] * 1e6:14.0f} {depth_err[k] * 1e6:7.0f} "
            f"{injected[k] * 1e6:13.0f} {pull:6.2f}"
        )
    click.echo(f"\ntotal {time.perf_counter() - t0:.1f} s; outputs in {folder}/")


_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML file: 'chain' and one table of parameters per step (see `exomiri config`).",
)


def _check_output(path: str, option: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse an output path whose folder is missing (or suffix wrong) before any long work."""
    target = Path(path)
    output_folder(target, f"{option} {path}")
    if suffixes and target.suffix.lower() not in suffixes:
        raise InputError(f"{option} {path}: use a file name ending in {' or '.join(suffixes)}.")


@main.command()
@click.argument("segments", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Session file to write (.h5).",
)
@_config_option
@click.option(
    "--chunks",
    type=click.IntRange(min=1),
    default=None,
    help="Reduce this many integrations at a time, in bounded memory (exomiri.reduce). "
    "Default: the whole observation in memory.",
)
def reduce(
    segments: tuple[str, ...], output: str, config_path: str | None, chunks: int | None
) -> None:
    """Run the chain on *_rateints.fits SEGMENTS (files or glob patterns) and save the session.

    Without --config the default chain runs: wavelength_map, clean, subtract_background
    (col_wise), clean, extract (optimal), align; `exomiri config` prints it as TOML.
    With --chunks the cubes go to the session chunk by chunk and only the small products stay
    in memory; the results equal the in-memory chain's (optimal spectra to about 1e-5).
    """
    import exomiri

    config = load_config(config_path)  # checked before the long part
    _check_output(output, "-o")
    plan = config.plan()
    t0 = time.perf_counter()
    if chunks is not None:
        if "select" in config.chain:
            raise InputError(
                f"{config_path}: [select] cannot be combined with --chunks; reduce in memory, "
                "or select integrations afterwards."
            )
        click.echo(f"reducing in chunks of {chunks} integrations", err=True)
        reduction = exomiri.reduce(
            list(segments), output, chunks=chunks, steps=[(p.step, p.params) for p in plan]
        )
        for i, record in enumerate(reduction.history, 1):
            click.echo(
                f"[{i}/{len(plan)}] {record.step:<20s} {record.method or '':<10s} "
                f"{record.duration_s:7.2f} s",
                err=True,
            )
        steps, path = len(reduction.history), reduction.session
    else:
        obs = exomiri.open(list(segments))
        click.echo(
            f"read {obs} from {len(obs.meta.segments)} segment(s) in "
            f"{time.perf_counter() - t0:.1f} s",
            err=True,
        )
        obs = run_plan(obs, plan, _progress)
        steps, path = len(obs.history), obs.save(output)
    click.echo(f"session {path}: {steps} steps in {time.perf_counter() - t0:.1f} s")


@main.command()
@click.argument("session", type=click.Path(dir_okay=False))
@click.option(
    "--from",
    "from_step",
    type=click.Choice(STEPS),
    default=None,
    help="Step to re-run from (default: continue with the steps the chain has left).",
)
@_config_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Session file to write (default: replace SESSION, atomically).",
)
def resume(
    session: str, from_step: str | None, config_path: str | None, output: str | None
) -> None:
    """Re-run a saved SESSION from a step with the parameters recorded in its history.

    Tables of --config override the recorded parameters of their step. Only steps after the
    last one that changed the cube (clean, subtract_background) can be re-run: typically
    extract and align.
    """
    import exomiri

    config = load_config(config_path)
    if output is not None:
        _check_output(output, "-o")
    t0 = time.perf_counter()
    obs = exomiri.load(session)
    plan, notes = resume_plan(obs, from_step, config, session)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    obs = run_plan(obs, plan, _progress)
    path = obs.save(output or session)
    click.echo(f"session {path}: re-ran {len(plan)} step(s) in {time.perf_counter() - t0:.1f} s")


def _format_value(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _read_session(path: Path, reader: Callable[[Any, Any, str], Any]) -> Any:
    """``reader(file, observation_group, version)`` on an open session, errors made readable.

    For what does not need the cubes (``info``, ``export``): only the small datasets are read.
    """
    import h5py

    from .exceptions import SessionFormatError
    from .io.hdf5 import _check_version

    if not path.exists():
        raise SessionFormatError(f"{path}: no such session file. Check the path.")
    try:
        with h5py.File(path, "r") as f:
            version = _check_version(path, f)
            return reader(f, f["observation"], version)
    except SessionFormatError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise SessionFormatError(
            f"{path} could not be read as an exomiri session ({type(exc).__name__}: {exc})."
        ) from exc


def _history(f) -> tuple:
    from .provenance import StepRecord

    raw = f["history"][()] if "history" in f else []
    return tuple(StepRecord.from_json(r.decode() if isinstance(r, bytes) else r) for r in raw)


def _load_products(session: str):
    """The session without its cubes: a :class:`~exomiri.chunked.Reduction` (products, times,
    history), enough for light curves; an older format is loaded whole and migrated."""
    import exomiri

    from .chunked import Reduction
    from .io.hdf5 import MIGRATIONS, _read_product
    from .observation import ObservationMeta

    path = Path(session)

    def read(f, group, version):
        if version in MIGRATIONS:
            return None
        small = {
            name: group[name][()]
            for name in ("int_times", "wavelength", "trace", "outlier_counts")
            if name in group
        }
        products = {name: _read_product(g, path) for name, g in group["products"].items()}
        return Reduction(
            session=str(path),
            shape=tuple(group["data"].shape),
            meta=ObservationMeta.from_dict(json.loads(group.attrs["meta"])),
            history=_history(f),
            **small,
            **products,
        )

    return _read_session(path, read) or exomiri.load(path)


@main.command()
@click.argument("session", type=click.Path(dir_okay=False))
def info(session: str) -> None:
    """What a session holds: shape, target, segments, steps with parameters, products.

    Reads the file's metadata only, so it is quick on large sessions.
    """
    import h5py

    path = Path(session)

    def read(f, group, version):
        arrays = {
            name: (ds.shape, ds.dtype) for name, ds in group.items() if isinstance(ds, h5py.Dataset)
        }
        products = {
            name: {k: (v.shape, v.dtype) for k, v in g.items()}
            for name, g in group["products"].items()
        }
        return version, json.loads(group.attrs["meta"]), arrays, products, _history(f)

    version, meta, arrays, products, history = _read_session(path, read)
    nints, nrows, ncols = arrays["data"][0]
    click.echo(f"session    {path} (format {version}, {path.stat().st_size / 2**20:.1f} MiB)")
    click.echo(f"target     {meta.get('target') or 'unknown'}")
    click.echo(f"shape      {nints} integrations x {nrows} rows x {ncols} columns")
    click.echo(
        f"subarray   {meta.get('subarray')} (SUBSTRT1={meta.get('substrt1')}, "
        f"SUBSTRT2={meta.get('substrt2')})"
    )
    segments = meta.get("segments", [])
    click.echo(f"segments   {len(segments)}")
    for s in segments:
        click.echo(f"  {s['filename']}  integrations {s['first']}-{s['last']}")
    total = sum(r.duration_s for r in history)
    click.echo(f"steps      {len(history)} ({total:.2f} s)")
    for k, r in enumerate(history, 1):
        name = f"{r.step}[{r.method}]" if r.method else r.step
        provider = f"  {r.provider}=={r.provider_version}" if r.method else ""
        click.echo(f"  {k}. {name:<30s} {r.duration_s:8.2f} s{provider}")
        for key, value in r.parameters.items():
            click.echo(f"       {key} = {_format_value(value)}")
    click.echo("arrays")
    for name, (shape, dtype) in arrays.items():
        click.echo(f"  {name:<22s} {tuple(shape)} {dtype}")
    click.echo("products   " + (", ".join(products) or "none"))
    for name, fields in products.items():
        for key, (shape, dtype) in fields.items():
            click.echo(f"  {name + '.' + key:<22s} {tuple(shape)} {dtype}")


@main.command()
@click.argument("session", type=click.Path(dir_okay=False))
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output file: .nc or .ecsv.",
)
@click.option(
    "--resolution", type=float, default=None, help="Bins of constant R = lambda / dlambda."
)
@click.option("--bin-width", type=float, default=None, help="Bins of this width (micron).")
@click.option("--pixels", type=int, default=None, help="Bins of this many detector rows.")
@click.option(
    "--range",
    "wavelength_range",
    type=(float, float),
    default=(5.0, 12.0),
    show_default=True,
    help="Wavelength range of the bins and the white light curve (micron).",
)
def export(
    session: str,
    target: str,
    resolution: float | None,
    bin_width: float | None,
    pixels: int | None,
    wavelength_range: tuple[float, float],
) -> None:
    """Write the light curves of SESSION to netCDF (.nc) or ECSV (.ecsv).

    Without a binning option the spectra go out at full resolution (one curve per row).
    """
    from exomiri.lightcurves import export as export_light_curves

    _check_output(target, "--to", (".nc", ".ecsv"))
    chosen = [
        name
        for name, v in (
            ("--resolution", resolution),
            ("--bin-width", bin_width),
            ("--pixels", pixels),
        )
        if v is not None
    ]
    if len(chosen) > 1:
        raise click.UsageError(
            f"Give one of --resolution, --bin-width, --pixels; got {' and '.join(chosen)}."
        )
    binning: dict[str, Any] = {}
    if bin_width is not None:
        if not bin_width > 0:
            raise InputError(
                f"--bin-width {bin_width} must be a positive width in micron, e.g. --bin-width 0.25."
            )
        lo, hi = wavelength_range
        binning["bins"] = np.arange(lo, hi + 1e-9, bin_width)
    elif resolution is not None:
        binning["resolution"] = resolution
    elif pixels is not None:
        binning["pixels"] = pixels
    if binning:
        binning["wavelength_range"] = wavelength_range
    obs = _load_products(session)
    written = export_light_curves(obs, target, **binning)
    kind = "binned" if binning else "full-resolution"
    click.echo(f"{kind} light curves of {obs.nints} integrations -> {written}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins(as_json: bool) -> None:
    """Installed plugins: name, distribution, version, hooks and methods."""
    import exomiri

    listed = exomiri.list_plugins()
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    for plugin in listed:
        click.echo(f"{plugin['name']}  ({plugin['distribution']}=={plugin['version']})")
        click.echo(f"  hooks: {', '.join(plugin['hooks']) or 'none'}")
        for kind, names in plugin["methods"].items():
            if names:
                click.echo(f"  {kind} methods: {', '.join(names)}")


@main.command()
@_config_option
def config(config_path: str | None) -> None:
    """Print the configuration `reduce` uses as TOML: the default, or --config checked and filled in."""
    click.echo(default_config_text(load_config(config_path)), nl=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
