"""Pictures of search results: a PNG grid (``search --grid``) and a static HTML page (``search --html``).

Each query is one row: the query image, then its k results with the class name (and distance) under each;
when the query's class is known each result gets a green (same class) or red (other class) frame. When the
k results are a choice among items tied at the k-th distance (flat indexes count them), the query says so:
"8 of 412 tied at distance 0".
"""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageOps

from deephash_cli import ties
from deephash_cli.artifacts import make_public
from deephash_cli.errors import DeephashError
from deephash_cli.ui import warn

GREEN, RED, GREY = (46, 160, 67), (207, 34, 46), (150, 150, 150)
THUMB = 96


def _thumbnail(opener: Callable[[], Image.Image] | None, size: int = THUMB) -> Image.Image:
    """The image scaled to fit ``size`` (pixel-exact upscaling for tiny images), or a grey square."""
    if opener is None:
        return Image.new("RGB", (size, size), (220, 220, 220))
    try:
        image = opener().convert("RGB")
    except DeephashError as err:
        warn(f"thumbnail unavailable: {err}")
        return Image.new("RGB", (size, size), (220, 220, 220))
    resample = Image.NEAREST if max(image.size) < size // 2 else Image.BICUBIC
    return ImageOps.pad(image, (size, size), method=resample, color=(255, 255, 255))


def _framed(image: Image.Image, colour: tuple[int, int, int] | None, width: int = 4) -> Image.Image:
    if colour is None:
        return image
    return ImageOps.expand(image.resize((image.width - 2 * width, image.height - 2 * width)), border=width,
                           fill=colour)


def cells(result: dict[str, Any], images) -> list[tuple[Image.Image, list[str], list[tuple[Image.Image, str]]]]:
    """Per query: (query thumbnail, caption lines, [(framed result thumbnail, caption)])."""
    stored = result["_stored"]
    rows = []
    for query, answer in zip(result["_queries"], result["queries"]):
        shown = []
        for row in answer["results"]:
            source = stored.sources[int(stored.items.source[row["id"]])]
            opener = None if row["name"].startswith("#") else (
                lambda s=source, n=row["name"]: images.open(s.get("dataset"), s.get("data_root"), n))
            colour = None if row["relevant"] is None else (GREEN if row["relevant"] else RED)
            distance = f"{row['distance']}" if isinstance(row["distance"], int) else f"{row['distance']:.3g}"
            shown.append((_framed(_thumbnail(opener), colour), f"{row['class']} ({distance})"))
        caption = ["query" + (f": {answer['class']}" if answer["class"] is not None else "")]
        tie = ties.caption(answer)
        if tie is not None:
            caption.append(tie)
        rows.append((_thumbnail(query.image), caption, shown))
    return rows


def save_grid(result: dict[str, Any], output: Path, *, force: bool, max_queries: int = 20) -> Path:
    """A matplotlib grid of the first ``max_queries`` queries and their results, saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deephash_cli.items import ItemImages
    from deephash_cli.plots import save_figure

    if output.exists() and not force:
        raise DeephashError(f"{output} exists; pass --force to overwrite it")
    if not output.parent.exists():
        raise DeephashError(f"output folder {output.parent} does not exist")
    rows = cells({**result, "_queries": result["_queries"][:max_queries],
                  "queries": result["queries"][:max_queries]}, ItemImages())
    if len(result["queries"]) > max_queries:
        warn(f"--grid shows the first {max_queries} of {len(result['queries'])} queries")
    n_cols = 1 + max(len(r[2]) for r in rows)
    figure, axes = plt.subplots(len(rows), n_cols, figsize=(1.25 * n_cols, 1.45 * len(rows)), squeeze=False)
    for r, (query_image, caption, shown) in enumerate(rows):
        for c in range(n_cols):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
            if c == 0:
                axis.imshow(query_image)
                axis.set_xlabel("\n".join(caption), fontsize=7 if len(caption) == 1 else 6, fontweight="bold")
            elif c - 1 < len(shown):
                image, text = shown[c - 1]
                axis.imshow(image)
                axis.set_xlabel(text, fontsize=6)
    figure.tight_layout(pad=0.3)
    return save_figure(figure, output, force=force)


def save_html(result: dict[str, Any], folder: Path, *, force: bool) -> Path:
    """``folder/index.html`` with thumbnails in ``folder/thumbs/``; every file written via temp + rename."""
    from deephash_cli.items import ItemImages
    from deephash_cli.records import write_text_atomic

    page = folder / "index.html"
    if page.exists() and not force:
        raise DeephashError(f"{page} exists; pass --force to overwrite it")
    if not folder.parent.exists():
        raise DeephashError(f"output folder {folder.parent} does not exist")
    thumbs = folder / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    parts = ["<!doctype html><meta charset='utf-8'><title>deephash search</title>",
             "<style>body{font-family:sans-serif}td{text-align:center;font-size:11px;vertical-align:top}"
             "img{display:block;margin:auto}</style>",
             f"<h1>deephash search</h1><p>{html.escape(str(result['index']))}: {result['items']} items, "
             f"{html.escape(result['type'])} index, {html.escape(result['metric'])}, k = {result['k']}, tie order "
             f"{html.escape(str(result.get('tie_order')))}</p><table>"]
    for q, (query_image, caption, shown) in enumerate(cells(result, ItemImages())):
        answer = result["queries"][q]
        extra = "".join(f"<br><i>{html.escape(line)}</i>" for line in caption[1:])
        cells_html = [f"<td>{_image_tag(query_image, thumbs / f'q{q}.png')}<b>{html.escape(caption[0])}</b><br>"
                      f"{html.escape(answer['query'])}{extra}</td>"]
        for j, ((image, text), row) in enumerate(zip(shown, answer["results"])):
            cells_html.append(f"<td>{_image_tag(image, thumbs / f'q{q}_{j}.png')}{html.escape(text)}<br>"
                              f"<small>{html.escape(row['path'])}</small></td>")
        parts.append("<tr>" + "".join(cells_html) + "</tr>")
    parts.append("</table>")
    return write_text_atomic(page, "\n".join(parts) + "\n", force=force)


def _image_tag(image: Image.Image, path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        make_public(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return f"<img src='thumbs/{html.escape(path.name)}' width='{image.width}' height='{image.height}'>"
