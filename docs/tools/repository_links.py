"""mkdocs hook: links from the pages to files elsewhere in the repository.

The pages link to results and configs outside docs/ (``../experiments/README.md``). Those
links work where the Markdown is read in the repository, but the files are not part of the
built site. This hook checks that each such target exists in the checkout (a missing one is a
warning, so ``mkdocs build --strict`` fails on it as it does on a broken link between pages)
and rewrites the link: to ``<repo_url>/blob/main/<path>`` when mkdocs.yml sets ``repo_url``,
otherwise to the repository path in code font. Fenced code blocks are left alone.
mkdocs.yml names this file under ``hooks``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.repository_links")

# [text](target) with a relative target (no scheme), the text possibly in code font.
LINK = re.compile(r"\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s:]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def outside_target(docs_dir: Path, root: Path, page_uri: str, target: str) -> str | None:
    """The path, relative to ``root``, that a link on ``page_uri`` points to when it leaves
    ``docs_dir`` but stays inside ``root``; None for links within the pages or elsewhere."""
    path = target.split("#", 1)[0]
    if not path:
        return None
    resolved = (docs_dir / page_uri).parent.joinpath(path).resolve()
    if resolved.is_relative_to(docs_dir) or not resolved.is_relative_to(root):
        return None
    return resolved.relative_to(root).as_posix()


def rewrite_links(
    markdown: str, docs_dir: Path, root: Path, page_uri: str, repo_url: str | None
) -> str:
    """``markdown`` with its links to repository files outside ``docs_dir`` rewritten."""

    def replace(match: re.Match[str]) -> str:
        target = match.group("target")
        rel = outside_target(docs_dir, root, page_uri, target)
        if rel is None:
            return match.group(0)
        if not (root / rel).exists():
            log.warning(
                "Doc file '%s' links to '%s', which is not in the repository", page_uri, rel
            )
            return match.group(0)
        text = match.group("text")
        if repo_url:
            anchor = target[len(target.split("#", 1)[0]) :]
            return f"[{text}]({repo_url.rstrip('/')}/blob/main/{rel}{anchor})"
        if text.strip("`") == rel:
            return f"`{rel}`"
        return f"{text} (`{rel}`)"

    out, last = [], 0
    for fence in FENCE.finditer(markdown):
        out.append(LINK.sub(replace, markdown[last : fence.start()]))
        out.append(fence.group(0))
        last = fence.end()
    out.append(LINK.sub(replace, markdown[last:]))
    return "".join(out)


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    return rewrite_links(markdown, docs_dir, root, page.file.src_uri, config.get("repo_url"))
