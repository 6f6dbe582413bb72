"""mkdocs hooks: publish the benchmark's plots with the site.

``docs/performance.md`` links its plots as ``../bench/results/*.png`` so that
they show when the Markdown is read in the repository; the site cannot reach
outside ``docs/``, so these hooks copy the plots in as ``bench-results/*.png``
and point the links there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def on_files(files: Files, config: Any) -> Files:
    """Add every plot of ``bench/results`` to the site as ``bench-results/NAME``."""
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"bench-results/{plot.name}", abs_src_path=str(plot)))
    return files


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Point links to ``../bench/results/`` at the copies."""
    return markdown.replace("](../bench/results/", "](bench-results/")
