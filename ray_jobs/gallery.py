"""The job's gallery: static pages of clips grouped by prompt, each card with its identity's thumbnail.

Paged (`PAGE_CARDS` a page, `index.html` first, the rest in `pages/`), so 100,000 clips open as fast as
200: a browser never lays out more than one page, and videos load only when played. Plain HTML, no
script: it opens from a laptop's disk, a bucket or any static server.
"""

import html
import re
from collections.abc import Iterator

from ray_jobs.destination import Destination

PAGE_CARDS = 200
SHOWN_FAILURES = 2000
NEIGHBOUR_PAGES = 5
PAGE = re.compile(r"page-(\d+)\.html")
STYLE = ("body{font-family:sans-serif;margin:16px}figure{display:inline-block;width:256px;margin:6px;"
         "vertical-align:top}figcaption{font-size:13px}figcaption img{width:40px;height:40px;object-fit:cover;"
         "border-radius:50%;vertical-align:middle;margin-right:6px}nav a,nav b{margin:0 4px}h2{font-size:16px;"
         "margin:18px 0 4px}")


def thumbnail_name(identity_sha: str | None) -> str:
    """The identity photo's thumbnail, relative to the output folder (one per photo, named by its hash)."""
    return f"identities/{identity_sha}.jpg"


def page_name(number: int) -> str:
    return "index.html" if number == 1 else f"pages/page-{number}.html"


def write_gallery(destination: Destination, done: list[dict], failed: list[dict]) -> int:
    """Write every page to the output's `Destination`; -> the number of clip pages. Clips sorted by prompt, then identity, then id."""
    done = sorted(done, key=lambda r: (r["prompt"], r.get("identity") or "", r["sample_id"]))
    pages = max(1, -(-len(done) // PAGE_CARDS))
    title = f"{len(done)} clips, {len(failed)} failed"
    for number in range(1, pages + 1):
        prefix = "" if number == 1 else "../"
        cards = done[(number - 1) * PAGE_CARDS:number * PAGE_CARDS]
        body = "".join(_grouped(cards, prefix))
        failures = f' · <a href="{prefix}failures.html">failures</a>' if failed else ""
        _write(destination, page_name(number), f"<h1>{title}</h1><p>grouped by prompt{failures}</p>"
                                           f"{_nav(number, pages, prefix)}{body}{_nav(number, pages, prefix)}")
    items = "".join(f"<li><b>{html.escape(r['sample_id'])}</b>: {html.escape(str(r.get('error'))[:300])}</li>"
                    for r in failed[:SHOWN_FAILURES])
    more = f"<p>{len(failed) - SHOWN_FAILURES} more in failures.parquet</p>" if len(failed) > SHOWN_FAILURES else ""
    for stale in destination.names("pages"):  # a page of an earlier, larger gallery
        if (match := PAGE.fullmatch(stale)) and int(match.group(1)) > pages:
            destination.delete(f"pages/{stale}")
    _write(destination, "failures.html", f'<h1>{len(failed)} failed</h1><p><a href="index.html">clips</a></p>'
                                     f"<ul>{items}</ul>{more}")
    return pages


def _grouped(cards: list[dict], prefix: str) -> Iterator[str]:
    """A heading per prompt, then its clips: in cross mode a prompt's identities sit side by side."""
    heading = None
    for record in cards:
        if record["prompt"] != heading:
            heading = record["prompt"]
            yield f"<h2>{html.escape(heading[:300])}</h2>"
        yield _card(record, prefix)


def _card(record: dict, prefix: str) -> str:
    name = html.escape(record["path"].removeprefix("videos/").removesuffix(".mp4"))
    thumbnail = (f'<img src="{prefix}{thumbnail_name(record["identity_sha"])}" alt="" loading="lazy">'
                 if record.get("identity_sha") else "")
    return (f'<figure><video controls preload="none" src="{prefix}videos/{name}.mp4" '
            f'poster="{prefix}posters/{name}.jpg" width="256"></video><figcaption>{thumbnail}'
            f'{html.escape(str(record.get("identity"))[:80])} · seed {record["seed"]}<br>'
            f'<small>{html.escape(record["sample_id"][:120])}</small></figcaption></figure>')


def _nav(number: int, pages: int, prefix: str) -> str:
    if pages == 1:
        return ""
    shown = sorted({1, pages, *range(max(1, number - NEIGHBOUR_PAGES), min(pages, number + NEIGHBOUR_PAGES) + 1)})
    links = [f"<b>{n}</b>" if n == number else f'<a href="{prefix}{page_name(n)}">{n}</a>' for n in shown]
    return f"<nav>page {number} of {pages}: {' '.join(links)}</nav>"


def _write(destination: Destination, name: str, body: str) -> None:
    with destination.output(name, ".html") as tmp:
        tmp.write_text(f"<!doctype html><meta charset=utf-8><title>echovideo gallery</title><style>{STYLE}</style>"
                       f"{body}", encoding="utf-8")
