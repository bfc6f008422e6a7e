"""MkDocs hook of the exomiri documentation site.

- Notebooks (``*.ipynb``) become pages: a ``<name>.md`` page is generated
  from ``<name>.ipynb`` (markdown cells as they are, code cells as Python
  blocks, text outputs when the notebook was saved with them), and the
  notebook itself stays downloadable next to it.
- Pages kept outside ``docs/`` (:data:`OUTSIDE_PAGES`, such as the benchmark
  figures in ``benchmarks/README.md``) are published as they are, so the site
  quotes them without a copy that could go stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from mkdocs.structure.files import File, Files

_OUTPUT_TYPES = ("text/markdown", "text/plain")
#: Site page -> file, relative to the repository root (the folder of mkdocs.yml).
OUTSIDE_PAGES = {"benchmarks.md": "benchmarks/README.md"}


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
    root = Path(config.config_file_path).parent
    for page, source in OUTSIDE_PAGES.items():
        if (root / source).exists() and files.get_file_from_path(page) is None:
            files.append(File.generated(config, page, abs_src_path=str(root / source)))
    return files
