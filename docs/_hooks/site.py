"""MkDocs hooks of the exomiri documentation site.

- Notebooks (``*.ipynb``) become pages: a ``<name>.md`` page is generated
  from ``<name>.ipynb`` (markdown cells as they are, code cells as Python
  blocks, text outputs when the notebook was saved with them), and the
  notebook itself stays downloadable next to it.
- A ``nav`` entry may be a glob pattern (``plugins/*.md``): it becomes one
  entry per matching page, titled by the page's first heading, ``index.md``
  first.  A pattern that matches nothing is reported as a warning, which
  ``mkdocs build --strict`` turns into a failure.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from pathlib import Path

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.exomiri")

_OUTPUT_TYPES = ("text/markdown", "text/plain")


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def notebook_to_markdown(raw: str, name: str) -> str:
    """The page for one notebook (nbformat 4 JSON)."""
    notebook = json.loads(raw)
    language = notebook.get("metadata", {}).get("kernelspec", {}).get("language", "python")
    parts = []
    for cell in notebook.get("cells", []):
        source = _text(cell.get("source", "")).rstrip()
        if cell.get("cell_type") == "markdown":
            parts.append(source + "\n")
            if len(parts) == 1:  # after the title and introduction
                parts.append(f"[Download this notebook]({name}) and run it as it is.\n")
        elif cell.get("cell_type") == "code" and source:
            parts.append(f"```{language}\n{source}\n```\n")
            for output in cell.get("outputs", []):
                text = _output_text(output)
                if text:
                    parts.append(f"```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def _output_text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return _text(output.get("text", ""))
    data = output.get("data", {})
    for kind in _OUTPUT_TYPES:
        if kind in data and "image/png" not in data:
            return _text(data[kind])
    return ""


def on_files(files: Files, config) -> Files:
    for file in list(files):
        if file.src_uri.endswith(".ipynb"):
            page = file.src_uri[: -len(".ipynb")] + ".md"
            if files.get_file_from_path(page) is None:
                content = notebook_to_markdown(
                    Path(file.abs_src_path).read_text(encoding="utf-8"), Path(file.src_uri).name
                )
                files.append(File.generated(config, page, content=content))
    return files


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("-", " ").replace("_", " ").capitalize()


def _expand(pattern: str, docs: Path) -> list:
    pages = sorted(
        p.relative_to(docs).as_posix()
        for p in docs.rglob("*.md")
        if fnmatch.fnmatch(p.relative_to(docs).as_posix(), pattern)
    )
    pages.sort(key=lambda p: (Path(p).name != "index.md", p))
    if not pages:
        log.warning("The nav pattern %r matches no page in %s.", pattern, docs)
    return [{_title(docs / p): p} for p in pages]


def _walk(nav, docs: Path):
    if isinstance(nav, list):
        return [_walk(item, docs) for item in nav]
    if isinstance(nav, dict):
        out = {}
        for title, value in nav.items():
            if isinstance(value, str) and "*" in value:
                out[title] = _expand(value, docs)
            else:
                out[title] = _walk(value, docs)
        return out
    return nav


def on_config(config):
    if config.nav:
        config.nav = _walk(config.nav, Path(config.docs_dir))
    return config
