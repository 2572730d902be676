"""Open the group and participant reports in headless Chromium: each renders, shows every
image and logs no error.

The product HTML has no script. The test writes a *copy* of the page with a small inline
script (an error hook in ``<head>`` and, on ``load``, a check that every image decoded) whose
result is written into the DOM and read back with ``--dump-dom``. Console messages of the
unmodified page are read from Chromium's log (``--enable-logging=stderr``). A screenshot of the
page is saved under the test's tmp folder.

The screenshots in ``docs/images/`` come from a real run: ``scripts/docs_screenshots.sh``
after ``scripts/demo.sh``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from test_group import make_config, write_group_fixture

from brainfm.bidsapp.group import REPORT_FILE, run_group_level

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless browser check needs Debian's chromium at /usr/bin/chromium "
           "(apt-get install --no-install-recommends chromium)",
)

_PROBE_HEAD = """<script>
window.__brainfmErrors = [];
window.addEventListener('error', function (e) {
  window.__brainfmErrors.push(String(e.message || (e.target && e.target.src) || e));
}, true);
</script>"""

_PROBE_BODY = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.alt; });
  var out = document.createElement('pre');
  out.id = 'brainfm-test-result';
  out.textContent = JSON.stringify({
    n_images: imgs.length, broken: broken, errors: window.__brainfmErrors,
    sections: document.querySelectorAll('section').length,
    height: document.body.scrollHeight
  });
  document.body.appendChild(out);
});
</script>"""


def _chromium(args: list[str], profile: Path, timeout: int = 120
              ) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def probe_copy(html: str) -> str:
    """The page with the test's error hook and image check inserted (test copy only)."""
    html = html.replace("<head>", "<head>\n" + _PROBE_HEAD, 1)
    return html.replace("</body>", _PROBE_BODY + "\n</body>", 1)


def screenshot(page: Path, target: Path, profile: Path, width: int = 1280,
               height: int = 2400) -> Path:
    """Render ``page`` and save a PNG screenshot of the top ``width`` x ``height`` pixels."""
    proc = _chromium([f"--window-size={width},{height}", "--virtual-time-budget=10000",
                      f"--screenshot={target}", page.as_uri()], profile)
    assert target.is_file(), proc.stderr[-2000:]
    return target


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """The group report and one participant's report of the same outputs."""
    from brainfm.reports.participant_report import participant_report

    root = tmp_path_factory.mktemp("browser")
    fx = write_group_fixture(root, n_participants=6, sessions_for=(0,), with_timeseries=True)
    run_group_level(make_config(fx["bids"], fx["out"], bias_correction="linear"))
    return {"group": fx["out"] / REPORT_FILE,
            "participant": participant_report(fx["out"], "02")}


#: Per report: least number of images, number of sections, least page height (px).
EXPECTED = {"group": (6, 7, 2000), "participant": (5, 6, 1500)}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_report_renders_with_all_images_and_no_errors(reports, kind, tmp_path):
    report = reports[kind]
    min_images, n_sections, min_height = EXPECTED[kind]
    html = report.read_text()
    n_img_tags = len(re.findall(r"<img\b", html))
    test_copy = tmp_path / f"{kind}_probe.html"
    test_copy.write_text(probe_copy(html))
    proc = _chromium(["--virtual-time-budget=10000", "--dump-dom", test_copy.as_uri()],
                     tmp_path / "profile")
    match = re.search(r'<pre id="brainfm-test-result">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"the page did not finish loading in Chromium:\n{proc.stderr[-3000:]}"
    result = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["n_images"] == n_img_tags >= min_images
    assert result["broken"] == []
    assert result["errors"] == []
    assert result["sections"] == n_sections
    assert result["height"] > min_height

    # the product page itself: no console message at all (it has no script)
    proc = _chromium(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                      "--dump-dom", report.as_uri()], tmp_path / "profile2")
    console = [line for line in proc.stderr.splitlines()
               if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    assert "Predictions" in proc.stdout

    from PIL import Image, ImageStat

    shot = screenshot(report, tmp_path / f"{kind}.png", tmp_path / "profile3")
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        spread = ImageStat.Stat(image.convert("L")).stddev[0]
    assert spread > 10, "the screenshot looks blank"
