"""The parse page (avvp/page.py), looked at as a person looks at it: in headless Chromium.

The browser tests need selenium and Debian's `chromium` + `chromium-driver` (.ci/run installs
them); without them they skip, saying what is missing.
"""
import io
import json
import os
import shutil
import time

import numpy as np
import pytest
import torch

from avvp import page, parse
from avvp.data import Split
from avvp.model import MMIL_Net

from conftest import ROOT, STAGE1, llp_file, run_stage

av = pytest.importorskip("av")
from avvp.synth_video import make_clip  # noqa: E402

N_SHOWN = 3  # videos of the small page


def browser_or_skip():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("browser test: selenium is not installed (pip install -e .[test])")
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("browser test: needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1400", "--mute-audio"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def browser():
    d = browser_or_skip()
    yield d
    d.quit()


def random_split(n, truth=True, seed=0):
    """n videos with random features (and random truth), as parse.run takes them."""
    g = torch.Generator().manual_seed(seed)
    feats = {"audio": torch.randn(n, 10, 128, generator=g), "video": torch.rand(n, 10, 2048, generator=g),
             "st": torch.rand(n, 10, 512, generator=g)}
    rng = np.random.default_rng(seed)
    gt_a = (rng.random((n, 25, 10)) < 0.05).astype(np.uint8) if truth else None
    gt_v = (rng.random((n, 25, 10)) < 0.05).astype(np.uint8) if truth else None
    labels = np.maximum(gt_a.max(2), gt_v.max(2)).astype(np.float32) if truth else None
    return Split([f"vid{i:04d}</script>" if i == 1 else f"vid{i:04d}" for i in range(n)], labels, feats,
                 torch.device("cpu"), gt_a, gt_v, path="random")


@pytest.fixture(scope="module")
def small_page(tmp_path_factory):
    """A parse of 3 videos with truth; the first two have their 10 s source clip beside the page."""
    out = tmp_path_factory.mktemp("page")
    (out / "videos").mkdir()
    clips = [make_clip(out / "videos" / f"clip{i}.mp4", seconds=10.0, size=(72, 96)) for i in range(2)]
    split = random_split(N_SHOWN)
    torch.manual_seed(0)
    res = parse.run(MMIL_Net(), split, str(out / "parsed"), title="random model",
                    sources={split.filenames[0]: str(clips[0]), split.filenames[1]: str(clips[1])})
    return out / "parsed", split, res


def test_page_is_one_offline_file_holding_the_parse(small_page):
    out, split, res = small_page
    text = (out / page.PAGE_FILE).read_text()
    assert str(out / page.PAGE_FILE) in res["paths"]
    assert "http://" not in text and "https://" not in text and "<link" not in text and "src=\"http" not in text
    blob = text.split('<script type="application/json" id="data">')[1].split("</script>")[0]
    data = json.loads(blob)                             # the id holding "</script>" did not end the block
    assert [v["id"] for v in data["videos"]] == split.filenames
    assert data["videos"][0]["src"] == "../videos/clip0.mp4" and data["videos"][2]["src"] is None
    for i, v in enumerate(data["videos"]):              # the page's runs are the CSV's events
        assert v["pa"] == page.runs_of(res["pred_a"][i]) and v["gv"] == page.runs_of(split.gt_v[i])
    table = res["tables"]["audio"]
    assert sum(len(v["pa"]) for v in data["videos"]) == len(table) == data["events"][0]
    assert data["metrics"]["seg_a"] == round(res["metrics"]["seg_a"], 2)
    fp = np.array(data["videos"][2]["fp"])              # (2, 25, 10) percent
    np.testing.assert_array_equal(fp, np.rint(res["probs"]["frame_prob"][2] * 100).transpose(1, 2, 0))


def shown(browser, path):
    browser.get(path.as_uri())
    for _ in range(100):
        if browser.execute_script("return document.querySelectorAll('section[data-filled]').length") > 0:
            return
        time.sleep(0.05)


def test_page_in_a_browser_shows_events_plays_the_video_and_seeks(browser, small_page):
    out, split, res = small_page
    shown(browser, out / page.PAGE_FILE)
    blocks = browser.find_elements("css selector", "section[data-video-id]")
    assert [b.get_attribute("data-video-id") for b in blocks] == split.filenames
    # a bar where the CSV says an audio event was predicted, at its onset and width
    row = res["tables"]["audio"].iloc[0]
    sec = browser.find_element("css selector", f"section[data-video-id='{row['filename']}']")
    bars = sec.find_elements("css selector", f".row.audio[data-class='{row['event_labels']}'] .bar.pred")
    assert [(int(b.get_attribute("data-onset")), int(b.get_attribute("data-offset"))) for b in bars][0] == \
        (int(row["onset"]), int(row["offset"]))
    track = bars[0].find_element("xpath", "..")
    width = track.size["width"]
    assert abs(bars[0].size["width"] - width * (row["offset"] - row["onset"]) / 10) <= 2
    # the LLP table as the page shows it
    cells = [c.text for c in browser.find_elements("css selector", "#scores table.llp tr:nth-child(2) td")]
    assert cells[0] == "Segment-level" and cells[1] == f"{res['metrics']['seg_a']:.2f}"
    # the video: loaded, about 10 s long; a click on second 7 of a timeline seeks there
    first = blocks[0]
    player = first.find_element("css selector", "video")
    for _ in range(100):
        if browser.execute_script("return arguments[0].readyState", player) >= 1:
            break
        time.sleep(0.05)
    duration = browser.execute_script("return arguments[0].duration", player)
    assert 9.5 <= duration <= 10.5
    track = first.find_element("css selector", ".row .track")
    browser.execute_script("arguments[0].scrollIntoView()", track)
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(browser).move_to_element_with_offset(track, int(track.size["width"] * (7.5 / 10 - 0.5)), 0).click().perform()
    assert browser.execute_script("return arguments[0].currentTime", player) == pytest.approx(7.0)
    assert blocks[2].find_elements("css selector", "video") == []     # no source: no player
    # what a person sees is not blank: many distinct colours, the timeline's blue and orange among them
    png = browser.get_screenshot_as_png()
    with av.open(io.BytesIO(png), format="png_pipe") as c:
        img = next(c.decode(video=0)).to_ndarray(format="rgb24")
    colours = {tuple(p) for p in img.reshape(-1, 3)[::7]}
    assert len(colours) > 50
    near = lambda rgb: (np.abs(img.astype(int) - rgb).sum(-1) < 30).sum()  # noqa: E731
    assert near((0x1f, 0x5f, 0x99)) > 200 and near((0xb3, 0x58, 0x06)) > 200


def test_large_parse_page_opens_with_every_block_and_draws_only_what_is_seen(browser, tmp_path):
    """The test split's size: 1,200 blocks, drawn as they scroll into view."""
    n = 1200
    split = random_split(n, seed=1)
    torch.manual_seed(0)
    parse.run(MMIL_Net(), split, str(tmp_path), title="1,200 videos")
    start = time.perf_counter()
    shown(browser, tmp_path / page.PAGE_FILE)
    seconds = time.perf_counter() - start
    count, filled = browser.execute_script(
        "return [document.querySelectorAll('section[data-video-id]').length, "
        "document.querySelectorAll('section[data-filled]').length]")
    print(f"1,200-video page: {(tmp_path / page.PAGE_FILE).stat().st_size / 2**20:.1f} MB, first blocks drawn "
          f"after {seconds:.2f} s, {filled} of {count} blocks drawn")
    assert count == n and 0 < filled < 50
    browser.execute_script("document.getElementById('v1100').scrollIntoView()")
    time.sleep(0.3)
    assert browser.execute_script("return document.getElementById('v1100').hasAttribute('data-filled')")


def test_real_llp_video_extract_parse_page(browser, tmp_path):
    """The one real LLP video: extract (random weights), parse with a released-layout model, and the
    page plays that very file."""
    video = llp_file("BjCEufrlXm4.mp4")
    from test_checkpoints import released_state_dict
    import subprocess
    import sys
    feats = tmp_path / "feats"
    r = subprocess.run([sys.executable, "-m", "avvp.extract", str(video), "--out", str(feats), "--random_weights",
                        "--no_progress", "--device", "cpu", "--workers", "0"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)
    assert r.returncode == 0, r.stderr
    models = tmp_path / "han"
    models.mkdir()
    torch.save(released_state_dict(seed=3), models / "MMIL_Net.pt")
    out = tmp_path / "parsed"
    r = run_stage(STAGE1, ["--mode", "parse", "--parse_dir", feats, "--parse_out", out, "--model_save_dir", models,
                           "--device", "cpu", "--no_progress"])
    assert r.returncode == 0, r.stderr
    assert f"page: {out / page.PAGE_FILE}" in r.stdout
    shown(browser, out / page.PAGE_FILE)
    player = browser.find_element("css selector", "section[data-video-id='BjCEufrlXm4'] video")
    for _ in range(100):
        if browser.execute_script("return arguments[0].readyState", player) >= 1:
            break
        time.sleep(0.05)
    assert player.get_attribute("src") == (video.resolve()).as_uri()   # the page's relative link, resolved
    assert 9.9 <= browser.execute_script("return arguments[0].duration", player) <= 10.1
