"""Plugin discovery and validation: every plugin, built-in or third-party, comes through one door.

Plugins are modules named in the ``cascade`` entry-point group of an installed distribution::

    [project.entry-points.cascade]
    my_domain = "my_package.plugin"

Loading imports each module, registers it with pluggy (which checks every ``@hookimpl`` against
:mod:`cascade.hookspecs`), then asks the provider hooks what each plugin contributes. Anything wrong is
a :class:`PluginError` that names the plugin and its distribution.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pluggy

from cascade import hookspecs

ENTRY_POINT_GROUP = "cascade"
PLUGINS_ENV = "CASCADE_PLUGINS"
"""Comma-separated modules to load as plugins without installing them (like ``$PYTEST_PLUGINS``)."""

hookimpl = pluggy.HookimplMarker("cascade")

# provider hook -> the kind of component it contributes (as shown by `cascade plugins`)
PROVIDER_HOOKS = {
    "cascade_stage_types": "stages",
    "cascade_environments": "environments",
    "cascade_rewards": "rewards",
    "cascade_teachers": "teachers",
    "cascade_rollout_engines": "rollout_engines",
    "cascade_stage_wrappers": "wrappers",
    "cascade_loggers": "loggers",
}


class PluginError(Exception):
    """A plugin could not be loaded or contradicts another one."""


class UnknownComponentError(LookupError):
    """A config names a component (stage type, environment, ...) that no plugin provides."""


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    provides: dict[str, list[str]] = field(default_factory=dict)
    config_searchpaths: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"plugin '{self.name}' ({self.module}) from distribution '{self.distribution} {self.version}'"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "provides": self.provides,
            "config_searchpaths": self.config_searchpaths,
        }


@dataclass
class Component:
    name: str
    factory: Callable[..., Any]
    plugin: PluginInfo


class PluginManager:
    """Loads plugins and answers "who provides X" questions for the runner and the CLI."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("cascade")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.components: dict[str, dict[str, Component]] = {kind: {} for kind in PROVIDER_HOOKS.values()}

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook

    # ---- loading ----------------------------------------------------------------------------------

    def load(self) -> "PluginManager":
        """Every plugin of the ``cascade`` entry-point group, then those named in ``$CASCADE_PLUGINS``."""
        self.load_entry_points()
        for module_name in filter(None, os.environ.get(PLUGINS_ENV, "").split(",")):
            info = PluginInfo(name=module_name, module=module_name, distribution=f"(${PLUGINS_ENV})", version="-")
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                raise PluginError(f"{info.origin} failed to import: {type(exc).__name__}: {exc}") from exc
            self.register(module, info)
        return self

    def load_entry_points(self) -> "PluginManager":
        """Import and register every plugin of the ``cascade`` entry-point group."""
        seen: dict[str, PluginInfo] = {}
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                distribution=dist.metadata["Name"] if dist else "?",
                version=dist.version if dist else "?",
            )
            if ep.name in seen:
                if seen[ep.name].module == ep.value:  # the same distribution seen twice on sys.path
                    continue
                raise PluginError(f"two plugins are named '{ep.name}': {seen[ep.name].origin} and {info.origin}")
            seen[ep.name] = info
            try:
                module = ep.load()
            except Exception as exc:  # any import-time failure is the plugin's, not ours
                raise PluginError(f"{info.origin} failed to import: {type(exc).__name__}: {exc}") from exc
            self.register(module, info)
        return self

    def register(self, plugin: object, info: PluginInfo | str) -> PluginInfo:
        """Register a module or object; a plain name stands for a plugin without a distribution."""
        if isinstance(info, str):
            module = getattr(plugin, "__name__", type(plugin).__name__)
            info = PluginInfo(name=info, module=module, distribution="(registered in-process)", version="-")
        if info.name in self.plugins:
            raise PluginError(f"two plugins are named '{info.name}': {self.plugins[info.name].origin} and {info.origin}")
        try:
            self.pm.register(plugin, name=info.name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(f"{info.origin} is invalid: {_explain_validation(exc)}") from exc
        info.hooks = sorted(impl_name for impl_name in _hookimpl_names(self.pm, plugin))
        self.plugins[info.name] = info
        self._collect_provisions(plugin, info)
        return info

    def unregister(self, name: str) -> None:
        """Remove a plugin registered for a run (a logger) and what it provided."""
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        for components in self.components.values():
            for key in [k for k, c in components.items() if c.plugin.name == name]:
                del components[key]

    def _collect_provisions(self, plugin: object, info: PluginInfo) -> None:
        for hook_name, kind in PROVIDER_HOOKS.items():
            impl = _impl_of(self.pm, plugin, hook_name)
            if impl is None:
                continue
            provided = impl.function()
            if not isinstance(provided, dict) or not all(isinstance(k, str) and callable(v) for k, v in provided.items()):
                raise PluginError(f"{info.origin}: {hook_name}() must return a dict of name -> factory, got {provided!r}")
            for name, factory in provided.items():
                if name in self.components[kind]:
                    other = self.components[kind][name].plugin
                    raise PluginError(f"{kind[:-1].replace('_', ' ')} '{name}' is provided twice: by {other.origin} and by {info.origin}")
                self.components[kind][name] = Component(name, factory, info)
            info.provides[kind] = sorted(provided)
        impl = _impl_of(self.pm, plugin, "cascade_config_searchpaths")
        if impl is not None:
            info.config_searchpaths = list(impl.function() or [])

    # ---- queries ----------------------------------------------------------------------------------

    def component(self, kind: str, name: str) -> Component:
        available = self.components[kind]
        if name in available:
            return available[name]
        raise UnknownComponentError(unknown_name_message(kind[:-1].replace("_", " "), name, available))

    def config_searchpaths(self) -> list[str]:
        return [path for info in self.plugins.values() for path in info.config_searchpaths]

    def describe(self) -> list[dict[str, Any]]:
        return [info.to_dict() for info in self.plugins.values()]


def unknown_name_message(what: str, name: str, valid: Iterable[str]) -> str:
    """"unknown stage type 'grpoo'; did you mean 'grpo'? Available: grpo, sft" — our one error style."""
    valid = sorted(valid)
    close = closest(name, valid)
    hint = f"; did you mean '{close}'?" if close else ""
    listing = ", ".join(valid) if valid else "(none: is the plugin that provides it installed?)"
    return f"unknown {what} '{name}'{hint} Available: {listing}"


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name the user most likely meant: a near spelling, or one that starts the same way."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return close[0]
    prefixed = [v for v in valid if v.startswith(name) or name.startswith(v)]
    return min(prefixed, key=len) if prefixed else None


def _impl_of(pm: pluggy.PluginManager, plugin: object, hook_name: str):
    caller = getattr(pm.hook, hook_name)
    return next((impl for impl in caller.get_hookimpls() if impl.plugin is plugin), None)


def _hookimpl_names(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    return [caller.name for caller in pm.get_hookcallers(plugin) or []]


def _explain_validation(exc: pluggy.PluginValidationError) -> str:
    """Restate pluggy's message with the hook's real signature, so the fix is obvious."""
    text = str(exc).strip()
    for name in dir(hookspecs):
        if name.startswith("cascade_") and f"'{name}'" in text:
            spec = getattr(hookspecs, name)
            return f"{text}\nthe hook is: {name}({', '.join(inspect.signature(spec).parameters)})"
    known = [n for n in dir(hookspecs) if n.startswith("cascade_")]
    if "unknown hook" in text:
        bad = text.split("'")[1] if "'" in text else text
        close = closest(bad, known)
        return f"{text}" + (f"; did you mean '{close}'?" if close else "") + f" Hooks: {', '.join(known)}"
    return text
