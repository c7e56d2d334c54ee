"""The relay's live view in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium): ``fastpacket demo --browser`` serves
the page and runs its load; the page must draw the load's players (read
back from the canvases' pixels and from the state the page exposes) and
its counters must move. The screenshot is saved (FASTPACKET_LIVE_VIEW_PNG
names where, docs/live-view.png to refresh the README's). Skipped where
Chromium, chromedriver or selenium is missing, unless
FASTPACKET_REQUIRE_BROWSER=1 (.ci/run sets it), where that fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from tests.served import CMD, Served

#: Players of the demo's load, and the MOVEs/s each sends.
PLAYERS = 24
RATE = 30
#: Seconds the demo's load runs: long enough for the page to load and draw.
DEMO_SECONDS = 20
#: Seconds the page may take to draw every player and show moving counters.
DRAW_TIMEOUT_S = 20.0
WINDOW = "1280,900"
BACKGROUND = (11, 14, 18)  # the canvas background, #0b0e12


def browser():
    """(chromium, chromedriver, selenium.webdriver), or a skip (a failure under FASTPACKET_REQUIRE_BROWSER=1)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if chromium and driver and webdriver:
        return chromium, driver, webdriver
    why = (f"needs chromium ({chromium}), chromedriver ({driver}) and selenium ({webdriver is not None}): "
           f"apt-get install chromium chromium-driver; pip install selenium")
    if os.environ.get("FASTPACKET_REQUIRE_BROWSER") == "1":
        pytest.fail(why)
    pytest.skip(why)


def wait_for(driver, script, timeout=DRAW_TIMEOUT_S):
    """Polls the page until `script` returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    state = driver.execute_script("const s = window.fastpacketLive; return s && JSON.stringify("
                                  "{connected: s.connected, closed: s.closed, drawn: s.drawnPlayers, "
                                  "moves: s.moves, stats: s.stats, errors: s.errors})")
    pytest.fail(f"the page never satisfied {script!r} within {timeout} s: {state}")


def test_live_view_in_headless_chromium(tmp_path):
    chromium, chromedriver, webdriver = browser()
    from selenium.webdriver.chrome.service import Service

    demo = Served([], tmp_path, cmd=CMD + ["demo", "--browser", "--seconds", str(DEMO_SECONDS), "--connections",
                                           str(PLAYERS), "--rate", str(RATE), "--rooms", "4"])
    driver = None
    try:
        m = re.search(r"live view on .* open (http://127\.0\.0\.1:\d+/) in a browser", demo.line)
        assert m, demo.line
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    f"--window-size={WINDOW}"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        driver.set_page_load_timeout(DRAW_TIMEOUT_S)
        driver.get(m.group(1))
        wait_for(driver, "return window.fastpacketLive && window.fastpacketLive.connected")
        # every player of the load drawn, in its 4 rooms
        wait_for(driver, f"return window.fastpacketLive.drawnPlayers >= {PLAYERS}")
        assert driver.execute_script("return window.fastpacketLive.rooms.size") == 4
        # the counters move: the server's packets/s, this page's MOVEs and round trips
        first = wait_for(driver, "const s = window.fastpacketLive; return s.stats && s.stats.packetsIn > 0 "
                                 "&& s.rtt.length > 0 && {moves: s.moves, stats: s.statsCount}")
        wait_for(driver, f"const s = window.fastpacketLive; return s.moves > {first['moves']} "
                         f"&& s.statsCount > {first['stats']}")
        # a few seconds of figures (round trips, MOVEs/s over a whole second) before the screenshot
        wait_for(driver, "const s = window.fastpacketLive; return s.rtt.length >= 10 && s.movesRate > 0")
        stats = driver.execute_script("return window.fastpacketLive.stats")
        assert stats["connections"] >= PLAYERS + 1 and stats["rooms"] == 4, stats
        # the players are on the canvases: pixels other than the background
        lit = driver.execute_script(f"""
            let lit = 0;
            for (const c of document.querySelectorAll('canvas')) {{
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              for (let i = 0; i < d.length; i += 4)
                if (d[i] !== {BACKGROUND[0]} || d[i + 1] !== {BACKGROUND[1]} || d[i + 2] !== {BACKGROUND[2]}) lit++;
            }}
            return lit;""")
        assert lit > PLAYERS * 10, lit  # a dot is about 50 pixels
        text = driver.find_element("id", "pin").text
        assert text not in ("", "-"), text
        shot = os.environ.get("FASTPACKET_LIVE_VIEW_PNG") or str(tmp_path / "live-view.png")
        assert driver.save_screenshot(shot)
        assert os.path.getsize(shot) > 10_000
    finally:
        if driver is not None:
            driver.quit()
        try:
            out, err = demo.proc.communicate(timeout=DEMO_SECONDS + 60)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert demo.proc.returncode == 0, (out + err).decode()
