"""The gallery in a real headless Chromium: cards with prompts, posters, thumbnails and scores; sorting and
filtering by score and by text; rejected and failed clips in their own sections; a 100,000-clip gallery open in
seconds and reviewed with the keyboard (Playwright driving the system's Chromium: keys, a note dialog, the
review.json download), whose marks `export --review` honours. The view is driven through the address's
#fragment, which is where the page's controls keep it."""

import os
import re
import shutil
import subprocess
import time
from urllib.parse import urlencode

import numpy as np
import pytest
from jobs import gallery_data

from ray_jobs.store.destination import Destination
from ray_jobs.store.gallery import PAGE_CARDS, write_gallery

IDENTITIES = 5
BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
# Skipped where there is no Chromium, except under CI=true: .ci/run installs it, and a green CI must mean these ran.
needs_browser = pytest.mark.skipif(BROWSER is None and os.environ.get("CI") != "true",
                                   reason="no Chromium here (.ci/run installs Debian's chromium)")


def records(count: int) -> list[dict]:
    """Cross mode: every prompt with each of five identities; identity score i/count, face share, motion."""
    return [{"sample_id": f"{i:024x}", "prompt": f"prompt {i // IDENTITIES:05d}: a person waves",
             "identity": f"faces/person-{i % IDENTITIES}.jpg", "identity_sha256": f"{i % IDENTITIES:064x}",
             "seed": 2**63 - 1 - i, "path": f"videos/{i:024x}.mp4",  # seeds past JavaScript's 2**53
             "scores": {"identity_average": round(i / count, 6), "identity_variation": 0.01,
                        "face_share": (i % 4) / 3, "motion": float(i % 7), "dynamic": i % 7 > 3}}
            for i in range(count)]


def with_thumbnails(folder, clips: list[dict]) -> None:
    """The identity thumbnails rank 0 writes for the clips it renders (a failed sample may have none)."""
    (folder / "identities").mkdir(exist_ok=True)
    for clip in clips:
        (folder / "identities" / f"{clip['identity_sha256']}.jpg").write_bytes(b"")


def show(folder, view: dict | None = None, seconds: float = 120) -> str:
    """The page's DOM after its scripts ran, in a real Chromium."""
    url = (folder / "index.html").as_uri() + (f"#{urlencode(view)}" if view else "")
    shown = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", "--allow-file-access-from-files",
                            f"--user-data-dir={folder / 'profile'}", "--dump-dom", url],
                           capture_output=True, text=True, timeout=seconds)
    assert shown.returncode == 0, shown.stderr[-2000:]
    head, _, rest = shown.stdout.partition('<div id="cards">')
    assert rest, "the page did not render"
    return head + rest.partition("<script")[0]  # the rendered page without the script's own text


def card_ids(dom: str) -> list[str]:
    return re.findall(r'<figure data-id="([0-9a-f]+)"', dom)


def identity_scores(dom: str) -> list[float]:
    return [float(v) for v in re.findall(r'<b class="ia">([0-9.]+)</b>', dom)]


@needs_browser
def test_cards_show_posters_thumbnails_and_scores_and_sections_split_rejected_and_failed(tmp_path):
    done = records(12)
    rejected = [{**r, "sample_id": f"r{r['sample_id'][1:]}", "error": "identity_average 0.010 < quality.min_identity 0.3"}
                for r in records(2)]
    failed = [{"sample_id": "bad<script>", "error": "identity: no face found <b>"}]
    with_thumbnails(tmp_path, done)
    write_gallery(Destination(tmp_path), done, failed, rejected)
    dom = show(tmp_path)
    assert "12 clips, 2 rejected, 1 failed" in dom
    assert len(card_ids(dom)) == 12 and dom.count("<h2>prompt") == 3  # grouped under a heading per prompt
    name = done[5]["path"].removeprefix("videos/").removesuffix(".mp4")
    assert f'poster="posters/{name}.jpg"' in dom and f'src="videos/{name}.mp4"' in dom
    assert f'src="identities/{done[5]["identity_sha256"]}.jpg"' in dom
    assert identity_scores(dom) == [round(i / 12, 3) for i in range(12)]
    assert "face <span class=\"fs\">100%</span>" in dom and "(dynamic)" in dom
    assert f"seed {2**63 - 1 - 5}" in dom  # exactly, not rounded to a double

    rejected_dom = show(tmp_path, {"section": "rejected"})
    assert len(card_ids(rejected_dom)) == 0 and rejected_dom.count("<figure") == 2
    assert "quality.min_identity 0.3" in rejected_dom
    failed_dom = show(tmp_path, {"section": "failed"})
    assert "bad&lt;script&gt;" in failed_dom and "no face found &lt;b&gt;" in failed_dom  # text, never markup
    assert "<figure" not in failed_dom


@needs_browser
def test_sorting_and_filtering_by_score_in_the_browser(tmp_path):
    done = records(40)
    write_gallery(Destination(tmp_path), done, [])
    best_first = identity_scores(show(tmp_path, {"sort": "-ia"}))
    assert best_first == sorted(best_first, reverse=True) and best_first[0] == round(39 / 40, 3)
    worst_first = identity_scores(show(tmp_path, {"sort": "ia"}))
    assert worst_first == sorted(worst_first) and len(worst_first) == 40

    filtered = show(tmp_path, {"min_identity": "0.5", "min_face": "0.6", "motion": "dynamic"})
    expected = [f"{i:024x}" for i, r in enumerate(done) if r["scores"]["identity_average"] >= 0.5
                and r["scores"]["face_share"] >= 0.6 and r["scores"]["dynamic"]]
    assert sorted(card_ids(filtered)) == expected and 0 < len(expected) < 40
    assert f"showing 1-{len(expected)} of {len(expected)}" in filtered
    by_motion = show(tmp_path, {"sort": "-m"})
    motions = [float(v) for v in re.findall(r"motion ([0-9.]+) px", by_motion)]
    assert motions == sorted(motions, reverse=True) and len(motions) == 40


@needs_browser
def test_a_100k_clip_gallery_opens_in_a_real_browser_in_seconds(tmp_path):
    clips = 100_000
    write_gallery(Destination(tmp_path), records(clips), [])
    assert len(gallery_data(tmp_path)["clips"]) == clips
    started = time.monotonic()
    dom = show(tmp_path)
    seconds = time.monotonic() - started
    assert len(card_ids(dom)) == PAGE_CARDS and f"page 1 of {clips // PAGE_CARDS}" in dom
    last = show(tmp_path, {"page": str(clips // PAGE_CARDS), "sort": "ia"})
    assert identity_scores(last)[-1] == round((clips - 1) / clips, 3)
    assert seconds < 60, f"{seconds:.1f} s to open the first page"  # a page of all clips: > 180 s


def figure_blocks(dom: str) -> list[str]:
    return re.findall(r"<figure .*?</figure>", dom, re.S)


@needs_browser
def test_every_card_in_every_view_shows_its_prompt_and_photo_and_text_finds_prompt_or_identity(tmp_path):
    done = records(30)
    failed = [{"sample_id": "f1", "prompt": "prompt 99999: a person jumps", "identity": "faces/person-9.jpg",
               "identity_sha256": "9" * 64, "error": "identity: no face found"}]
    with_thumbnails(tmp_path, done)  # the failed sample's photo never got one: its card shows no broken image
    write_gallery(Destination(tmp_path), done, failed, [{**done[0], "sample_id": "r0", "error": "below the gate"}])
    for view in ({}, {"sort": "-ia"}, {"sort": "m"}, {"section": "rejected"}):
        figures = figure_blocks(show(tmp_path, view))
        assert figures, view
        for figure in figures:  # the prompt and the thumbnail on every card, whatever the order
            prompt = re.search(r'<span class="prompt" title="([^"]*)"', figure).group(1)
            assert prompt.startswith("prompt ") and 'class="thumb" src="identities/' in figure, (view, figure)
    failed_dom = show(tmp_path, {"section": "failed"})
    assert "prompt 99999: a person jumps" in failed_dom and "faces/person-9.jpg" in failed_dom
    assert f'identities/{"9" * 64}.jpg' not in failed_dom
    assert "no face found" in failed_dom

    found = show(tmp_path, {"q": "PERSON-2 00003"})  # every word, any case, in the prompt or the identity
    expected = [r["sample_id"] for r in done if "person-2" in r["identity"] and "00003" in r["prompt"]]
    assert card_ids(found) == expected and len(expected) == 1
    assert show(tmp_path, {"q": "person-9", "section": "failed"}).count('<li class="failed"') == 1


def open_page(browser, folder):
    page = browser.new_page(accept_downloads=True)
    page.goto((folder / "index.html").as_uri())
    page.wait_for_selector("#cards figure")
    return page


def current_card(page) -> str:
    return page.eval_on_selector("figure.current", "f => f.dataset.id")


@needs_browser
def test_a_reviewer_steps_through_100k_clips_with_the_keyboard_marks_them_and_downloads_review_json(tmp_path):
    """Keys: j/k step (across a page boundary), space plays and pauses the real mp4, x/a mark, n asks for a note;
    marks survive a reload (the browser keeps them), filter the view, and download as the review.json that
    `export --review` reads."""
    from playwright import (
        sync_api as playwright,  # a test dependency: missing is a failure, never a skip
    )

    from echovideo.video_io import write_mp4
    from ray_jobs.data.review import read_review

    done = records(100_000)
    write_gallery(Destination(tmp_path), done, [])
    (tmp_path / "videos").mkdir()
    write_mp4(np.random.default_rng(0).integers(0, 255, (80, 64, 64, 3), np.uint8), tmp_path / done[0]["path"], fps=8)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=BROWSER, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = open_page(browser, tmp_path)
            page.keyboard.press("j")
            assert current_card(page) == done[0]["sample_id"]
            page.keyboard.press(" ")  # the current card's video plays, and pauses on the next space
            page.wait_for_function("!document.querySelector('figure.current video').paused", timeout=60_000)
            page.keyboard.press(" ")
            page.wait_for_function("document.querySelector('figure.current video').paused", timeout=60_000)
            page.keyboard.press("x")
            page.keyboard.press("j")
            page.keyboard.press("a")
            page.once("dialog", lambda dialog: dialog.accept("too dark"))
            page.keyboard.press("n")
            for _ in range(PAGE_CARDS - 1):  # from the 2nd card past the page's last: the next page's first
                page.keyboard.press("j")
            page.wait_for_function("location.hash.includes('page=2')")
            assert current_card(page) == done[PAGE_CARDS]["sample_id"]
            page.keyboard.press("x")
            # Back across the boundary and a mark in the same moment (keys faster than the page's hashchange):
            # the mark lands on page 1's last card, never on the page-2 card still at that index.
            page.evaluate("""() => { for (const key of ["k", "a"])
                document.body.dispatchEvent(new KeyboardEvent("keydown", {key, bubbles: true})); }""")
            assert "page=2" not in page.evaluate("location.hash")
            assert current_card(page) == done[PAGE_CARDS - 1]["sample_id"]

            page.reload()
            page.wait_for_selector("#cards figure")
            assert page.eval_on_selector(f'figure[data-id="{done[0]["sample_id"]}"]', "f => f.className") == "mark-reject"
            page.goto((tmp_path / "index.html").as_uri() + "#marked=reject")
            page.wait_for_function("document.querySelectorAll('#cards figure').length === 2")
            with page.expect_download() as download:
                page.click("#download")
            saved = tmp_path / "review.json"
            download.value.save_as(saved)
        finally:
            browser.close()
    marks = read_review(str(saved), "--review")
    assert {sid: (m.mark, m.note) for sid, m in marks.items()} == {
        done[0]["sample_id"]: ("reject", ""), done[1]["sample_id"]: ("keep", "too dark"),
        done[PAGE_CARDS - 1]["sample_id"]: ("keep", ""), done[PAGE_CARDS]["sample_id"]: ("reject", "")}
