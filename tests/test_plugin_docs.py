"""The plugin documentation: every hook has a heading and a test, and the examples work.

``docs/plugins/hooks.md`` has one heading per hook specification of
``exomiri.hookspecs`` (and none for hooks that do not exist) with its
signature; every hook is exercised by some test; the examples under each
hook keep exomiri's plugin contract; and the plugin of the tutorial
(``docs/plugins/writing.md``) is built from the page and its own tests pass.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

from exomiri import hookspecs
from exomiri.testing import check_method

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "plugins"
HOOKS = {
    name: function
    for name, function in vars(hookspecs).items()
    if callable(function) and hasattr(function, f"{hookspecs.PROJECT}_spec")
}
#: A fenced code block: its info string and its body.
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def sections(text: str) -> dict[str, str]:
    """The text under each level-2 heading, by the heading (backticks removed)."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {title.strip().strip("`"): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_the_hook_specs_are_the_ones_we_know():
    assert set(HOOKS) == {
        "exomiri_register_background_methods",
        "exomiri_register_extraction_methods",
    }


def test_every_hook_spec_has_a_heading_with_its_signature():
    documented = sections((DOCS / "hooks.md").read_text())
    hook_headings = {title for title in documented if title.startswith("exomiri_")}
    assert hook_headings == set(HOOKS), "hooks.md headings must match exomiri.hookspecs"
    for name, spec in HOOKS.items():
        parameters = ", ".join(inspect.signature(spec).parameters)
        assert re.search(rf"def {name}\({parameters}\b", documented[name]), name
        assert (spec.__doc__ or "").strip(), f"{name} has no docstring"


def test_every_hook_spec_is_exercised_by_a_test():
    me = Path(__file__).resolve()
    files = [
        *(ROOT / "tests").rglob("test_*.py"),
        *(ROOT / "plugins").glob("*/tests/test_*.py"),
    ]
    texts = [f.read_text() for f in files if f.resolve() != me]
    for name in HOOKS:
        assert any(name in text for text in texts), f"no test mentions the hook {name}"


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_the_example_of_each_hook_keeps_the_contract(hook):
    body = sections((DOCS / "hooks.md").read_text())[hook]
    examples = [code for lang, code in BLOCK.findall(body) if lang == "python" and "class " in code]
    assert len(examples) == 1, f"one example per hook in hooks.md ({hook})"
    module = types.ModuleType(f"hooks_md_{hook}")
    exec(compile(examples[0], f"docs/plugins/hooks.md ({hook})", "exec"), module.__dict__)
    registered: list[type] = []
    getattr(module, hook)(register=registered.append)
    assert registered
    for method in registered:
        check_method(method)


def tutorial_files() -> dict[str, str]:
    """The files of the tutorial: blocks whose first line is ``# file: <path>``."""
    out = {}
    for _, code in BLOCK.findall((DOCS / "writing.md").read_text()):
        first, _, rest = code.partition("\n")
        if first.startswith("# file: "):
            out[first[len("# file: ") :].strip()] = rest
    return out


def test_the_tutorial_plugin_builds_and_its_tests_pass(tmp_path):
    files = tutorial_files()
    assert {
        "exomiri-row-mean/pyproject.toml",
        "exomiri-row-mean/README.md",
        "exomiri-row-mean/exomiri_row_mean/__init__.py",
        "exomiri-row-mean/tests/test_row_mean.py",
    } <= set(files)
    for path, text in files.items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    project = tmp_path / "exomiri-row-mean"
    # installed as pip would: a dist-info with its metadata and entry points on sys.path
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    site = tmp_path / "site"
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n"
    )
    points = meta["entry-points"]["exomiri"]
    (info / "entry_points.txt").write_text(
        "[exomiri]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(site), str(project), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.pop("EXOMIRI_DISABLED_PLUGINS", None)
    env.pop("EXOMIRI_LOAD_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout, result.stdout
