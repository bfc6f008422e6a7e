"""The plugin manager: built-in methods and entry-point plugins, loaded once, lazily.

Built-in modules are listed in :data:`DEFAULT_PLUGINS` and registered exactly
like third-party plugins found in the entry-point group ``exomiri``.  Two
environment variables choose what loads:

``EXOMIRI_LOAD_PLUGINS``
    comma-separated allow-list of entry-point names or distribution names;
    when set, only those third-party plugins load (built-ins always do).
``EXOMIRI_DISABLED_PLUGINS``
    comma-separated block-list of entry-point, distribution or built-in
    module names.

A plugin that fails to import or register is skipped with a
:class:`~exomiri.PluginWarning` naming ``distribution==version``; exomiri goes
on with the others.  Two methods with one name make that name unusable (an
error naming both distributions when selected) and leave the rest working.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .exceptions import DuplicateMethodError, InputError, PluginWarning, UnknownMethodError

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "MethodInfo",
    "get_method",
    "get_plugin_manager",
    "list_plugins",
    "methods",
]

ENTRY_POINT_GROUP = "exomiri"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "exomiri.builtin.background",
    "exomiri.builtin.extraction",
)

#: method kind -> (hook name, name of the method's entry function)
KINDS: dict[str, tuple[str, str]] = {
    "background": ("exomiri_register_background_methods", "estimate"),
    "extraction": ("exomiri_register_extraction_methods", "extract"),
}


@dataclass(frozen=True)
class MethodInfo:
    """One registered method: what it is, what it takes and who supplied it."""

    kind: str
    name: str
    description: str
    parameters: dict[str, Any]
    cls: type
    distribution: str
    version: str
    plugin: str
    conflicts: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        return (
            f"<{self.kind} method {self.name!r} from {self.distribution}=={self.version}: "
            f"{self.description} ({params})>"
        )


@dataclass
class _State:
    pm: pluggy.PluginManager
    dists: dict[str, tuple[str, str]]  # plugin name -> (distribution, version)
    methods: dict[str, dict[str, MethodInfo]]


_lock = threading.Lock()
_state: _State | None = None


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


def _exomiri_version() -> str:
    try:
        return metadata.version("exomiri")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "0+unknown"


def _validate_hooks(pm: pluggy.PluginManager, plugin: object, label: str) -> bool:
    """Reject a plugin with hook implementations that match no spec (a typo)."""
    unknown = [
        caller.name
        for caller in vars(pm.hook).values()
        if isinstance(caller, pluggy.HookCaller)
        and not caller.has_spec()
        and any(impl.plugin is plugin for impl in caller.get_hookimpls())
    ]
    if unknown:
        known = ", ".join(KINDS[k][0] for k in KINDS)
        warnings.warn(
            PluginWarning(
                f"Plugin {label} implements unknown hook(s) {', '.join(sorted(unknown))}; "
                f"it was not loaded. Known hooks: {known}. Check the spelling in the plugin."
            ),
            stacklevel=3,
        )
        return False
    return True


def _register(pm: pluggy.PluginManager, plugin: object, name: str, label: str) -> bool:
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # a broken plugin must not break exomiri
        warnings.warn(
            PluginWarning(f"Plugin {label} could not be registered: {exc!r}; skipped."),
            stacklevel=3,
        )
        return False
    if not _validate_hooks(pm, plugin, label):
        pm.unregister(plugin)
        return False
    return True


def _load() -> _State:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    dists: dict[str, tuple[str, str]] = {}
    disabled = _env_list("EXOMIRI_DISABLED_PLUGINS") or set()
    allowed = _env_list("EXOMIRI_LOAD_PLUGINS")

    for module_name in DEFAULT_PLUGINS:
        if module_name in disabled:
            continue
        module = importlib.import_module(module_name)
        if _register(pm, module, module_name, f"{module_name} (exomiri=={_exomiri_version()})"):
            dists[module_name] = ("exomiri", _exomiri_version())

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist_name = ep.dist.name if ep.dist is not None else "unknown"
        dist_version = ep.dist.version if ep.dist is not None else "unknown"
        label = f"{ep.name!r} from {dist_name}=={dist_version}"
        names = {ep.name, dist_name}
        if names & disabled:
            continue
        if allowed is not None and not names & allowed:
            continue
        if pm.has_plugin(ep.name):
            warnings.warn(
                PluginWarning(
                    f"Plugin name {ep.name!r} from {dist_name}=={dist_version} is already "
                    "taken; skipped. Rename the entry point."
                ),
                stacklevel=2,
            )
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            warnings.warn(
                PluginWarning(
                    f"Plugin {label} failed to load ({type(exc).__name__}: {exc}); skipped. "
                    f"Fix or uninstall {dist_name}, or set EXOMIRI_DISABLED_PLUGINS={ep.name}."
                ),
                stacklevel=2,
            )
            continue
        if _register(pm, plugin, ep.name, label):
            dists[ep.name] = (dist_name, dist_version)

    state = _State(pm=pm, dists=dists, methods={})
    for kind in KINDS:
        state.methods[kind] = _collect(state, kind)
    return state


def _parameters(cls: type, entry: str, label: str) -> dict[str, Any]:
    func = getattr(cls, entry, None)
    if not callable(func):
        raise TypeError(f"method class {cls.__qualname__} from {label} has no {entry}() method")
    params = list(inspect.signature(func).parameters.values())
    if len(params) < 2:
        raise TypeError(
            f"{cls.__qualname__}.{entry}(self, frames, *, ...) from {label} must take the frames"
        )
    out: dict[str, Any] = {}
    for p in params[2:]:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(
                f"{cls.__qualname__}.{entry} from {label}: parameter {p.name!r} must be "
                "keyword-only with a default (put it after '*'); **kwargs is not allowed."
            )
        if p.default is inspect.Parameter.empty:
            raise TypeError(
                f"{cls.__qualname__}.{entry} from {label}: parameter {p.name!r} needs a default."
            )
        out[p.name] = p.default
    return out


def _describe(kind: str, cls: type, plugin: str, dist: tuple[str, str]) -> MethodInfo:
    label = f"{dist[0]}=={dist[1]}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"method class {cls!r} from {label} has no string 'name'")
    return MethodInfo(
        kind=kind,
        name=name,
        description=str(getattr(cls, "description", "") or ""),
        parameters=_parameters(cls, KINDS[kind][1], label),
        cls=cls,
        distribution=dist[0],
        version=dist[1],
        plugin=plugin,
    )


def _collect(state: _State, kind: str) -> dict[str, MethodInfo]:
    hook_name = KINDS[kind][0]
    found: dict[str, MethodInfo] = {}
    caller = getattr(state.pm.hook, hook_name)
    # get_hookimpls() lists implementations in registration order: built-ins first.
    for impl in caller.get_hookimpls():
        plugin = impl.plugin_name
        dist = state.dists.get(plugin, ("unknown", "unknown"))
        registered: list[type] = []
        try:
            impl.function(register=registered.append)
        except Exception as exc:
            warnings.warn(
                PluginWarning(
                    f"Plugin {plugin!r} from {dist[0]}=={dist[1]} failed in {hook_name} "
                    f"({type(exc).__name__}: {exc}); its {kind} methods are skipped."
                ),
                stacklevel=2,
            )
            continue
        for cls in registered:
            try:
                info = _describe(kind, cls, plugin, dist)
            except TypeError as exc:
                warnings.warn(PluginWarning(f"{exc}; method skipped."), stacklevel=2)
                continue
            if info.name in found:
                first = found[info.name]
                both = (
                    *(first.conflicts or (f"{first.distribution}=={first.version}",)),
                    f"{info.distribution}=={info.version}",
                )
                warnings.warn(
                    PluginWarning(
                        f"The {kind} method name {info.name!r} is registered by {' and '.join(both)}; "
                        f"it cannot be selected until one is uninstalled or disabled with "
                        f"EXOMIRI_DISABLED_PLUGINS."
                    ),
                    stacklevel=2,
                )
                found[info.name] = MethodInfo(**{**first.__dict__, "conflicts": both})
            else:
                found[info.name] = info
    return found


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, created and loaded on first use."""
    return _get_state().pm


def _get_state() -> _State:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state


def reset() -> None:
    """Forget loaded plugins; the next call loads them again (for tests and notebooks)."""
    global _state
    with _lock:
        _state = None
        _packages_distributions.cache_clear()


def methods(kind: str) -> dict[str, MethodInfo]:
    """The registered methods of one kind (``"background"`` or ``"extraction"``), by name."""
    if kind not in KINDS:
        raise InputError(f"Unknown method kind {kind!r}; use one of {', '.join(KINDS)}.")
    return dict(_get_state().methods[kind])


def get_method(kind: str, method: str | type, history: Sequence[Any] = ()) -> MethodInfo:
    """Resolve ``method=`` (a registered name, or a method class used directly).

    ``history``: the provenance records of the observation asking.  When no
    method has the name but a record says which distribution supplied it,
    the error names that ``distribution==version`` and how to install it.
    """
    if isinstance(method, type):
        module = inspect.getmodule(method)
        dist = _distribution_of(module)
        return _describe(kind, method, method.__module__, dist)
    if not isinstance(method, str):
        raise InputError(
            f"method={method!r} is neither a {kind} method name nor a method class; "
            f"use one of {', '.join(methods(kind))}."
        )
    available = methods(kind)
    if method not in available:
        raise UnknownMethodError(_unknown_message(kind, method, available, history))
    info = available[method]
    if info.conflicts:
        raise DuplicateMethodError(
            f"The {kind} method {method!r} is registered by {' and '.join(info.conflicts)}. "
            "Uninstall one, or disable one with EXOMIRI_DISABLED_PLUGINS=<entry point name>."
        )
    return info


#: The step that uses each kind of method, as named in provenance records.
_STEPS = {"background": "subtract_background", "extraction": "extract"}


def _unknown_message(kind: str, method: str, available: dict, history: Sequence[Any]) -> str:
    known = f"Known {kind} methods: {', '.join(sorted(available)) or 'none'}."
    record = next(
        (r for r in reversed(history) if r.step == _STEPS[kind] and r.method == method), None
    )
    if record is None:
        return (
            f"No {kind} method named {method!r}. {known} Install the plugin that provides it, "
            "or check the spelling."
        )
    dist, version = record.provider, record.provider_version
    if dist in ("local", "unknown", ""):
        return (
            f"No {kind} method named {method!r} is installed. This observation's history "
            f"records it from a class passed directly, not from an installed distribution; "
            f"pass that class again (method=TheClass). {known}"
        )
    wanted = f"{dist}=={version}" if version else dist
    try:
        installed = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return (
            f"The {kind} method {method!r} is not installed. This observation's history "
            f"records it from {wanted}; install that with: python -m pip install '{wanted}'. "
            f"{known}"
        )
    return (
        f"The {kind} method {method!r} is not loaded, although {dist}=={installed} is "
        f"installed (this observation's history records {wanted}). Check the environment "
        f"variables EXOMIRI_DISABLED_PLUGINS and EXOMIRI_LOAD_PLUGINS. {known}"
    )


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    """Top-level package -> distributions; scanning every installed distribution takes seconds."""
    return metadata.packages_distributions()


def _distribution_of(module: ModuleType | None) -> tuple[str, str]:
    if module is None:
        return ("local", "")
    top = module.__name__.split(".")[0]
    for dist_name in _packages_distributions().get(top, []):
        try:
            return (dist_name, metadata.version(dist_name))
        except metadata.PackageNotFoundError:  # pragma: no cover
            continue
    return ("local", "")


def list_plugins() -> list[dict[str, Any]]:
    """Each loaded plugin: name, distribution, version, hooks and the methods it provides."""
    state = _get_state()
    out = []
    for plugin_name, plugin in state.pm.list_name_plugin():
        dist, version = state.dists.get(plugin_name, ("unknown", "unknown"))
        hooks = sorted(c.name for c in state.pm.get_hookcallers(plugin) or [])
        provided = {
            kind: sorted(name for name, m in state.methods[kind].items() if m.plugin == plugin_name)
            for kind in KINDS
        }
        out.append(
            {
                "name": plugin_name,
                "distribution": dist,
                "version": version,
                "hooks": hooks,
                "methods": provided,
            }
        )
    return out
