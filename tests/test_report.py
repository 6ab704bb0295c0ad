"""`snakemake --report` on the finished tiny run, opened in a real headless Chromium.

The report is one HTML file whose figures, tables and captions are data inside a React app:
they only exist on the page once its JavaScript has run. The test builds the report of the
session's shared tiny run (tests/test_survey_workflow.py), then loads it in Chromium (Debian's
``chromium`` package; installed with apt-get when missing and running as root, as CI does;
skipped only where it cannot be installed) with a small driver script appended: for every
result in the report it does what the report's buttons do (open the result's info panel,
show the result), waits for React to render and records the rendered caption text, whether
the image decoded (its pixel size) or the HTML table it shows. ``--dump-dom`` returns the
page after ``--virtual-time-budget``; a ``--screenshot`` of one figure with its caption is
checked for content and left in tmp_path for a person to look at.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_survey_workflow import _snakemake, tiny_survey_run  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ROOT / "workflow" / "report"

# Every product the report must show (path under results/tiny/) -> its caption file.
EXPECTED = {
    "figures/mock_mass_function.png": "mock_mass_function",
    "figures/mock_split_masses.png": "mock_split_masses",
    "figures/mock_phase_space.png": "mock_phase_space",
    "figures/loss_curve.png": "loss_curve",
    "figures/joint_pdf.png": "joint_pdf",
    "figures/predictions.png": "predictions",
    "figures/calibration.png": "calibration",
    "figures/interlopers.png": "interlopers",
    "figures/baselines.png": "baselines",
    "figures/mass_function.png": "mass_function",
    "figures/survey_pulls.png": "survey_pulls",
    "figures/flow_loss.png": "flow_loss",
    "figures/flow_predictions.png": "flow_predictions",
    "figures/flow_calibration.png": "flow_calibration",
    "figures/comparison.png": "comparison",
    "ablation/scatter.png": "ablation",
    "robustness/robustness.png": "robustness",
    "saliency/mean.png": "saliency_mean",
    "saliency/abs.png": "saliency_abs",
    "evaluation/metrics.csv": "metrics_table",
    "report/metrics.html": "metrics_table",
    "comparison/summary.csv": "comparison_table",
    "report/comparison.html": "comparison_table",
    "survey/mass_function.csv": "mass_function_table",
    "report/mass_function.html": "mass_function_table",
    "survey/posteriors.csv": "posteriors_table",
    "report/posteriors.html": "posteriors_table",
}
STAGES = ["1. Mock catalogue", "2. Training", "3. Calibration and evaluation",
          "4. Survey inference", "5. Neural flow and comparison", "6. Analyses"]
SHOT = "results/tiny/figures/predictions.png"

# Appended to a copy of the report: drives the report's own app (globals `app`, `results`,
# `categories` of Snakemake's report template) as its buttons do, and writes what rendered
# into <pre id="cmpipe-check"> (or, with #shot=PATH, leaves PATH shown for a screenshot).
DRIVER = r"""
<script>
(function () {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  async function until(cond, ms) {  // poll: React renders asynchronously
    for (let t = 0; t < ms && !cond(); t += 50) await sleep(50);
    return cond();
  }
  const appText = () => document.querySelector("#app").textContent;
  const ready = () => typeof app !== "undefined" && appText().includes("Results");
  async function check() {
    const out = {categories: {}, results: {}, menu: ""};
    if (!(await until(ready, 30000))) throw new Error("the report app did not render");
    out.menu = appText();
    for (const cat of Object.keys(categories)) {
      out.categories[cat] = Object.keys(categories[cat]);
    }
    for (const path of Object.keys(results)) {
      const r = results[path];
      const rec = {name: r.name, mime: r.mime_type};
      app.showResultInfo(path);
      await until(() => appText().includes(r.name) && appText().includes("Config:"), 5000);
      rec.info = appText();
      if (r.mime_type.startsWith("image/")) {
        app.setView({content: "img", contentPath: r.data_uri, resultPath: path});
        const find = () => [...document.querySelectorAll("img")].find(
          (i) => i.src === r.data_uri && i.complete && i.naturalWidth > 0);
        await until(find, 5000);
        const img = [...document.querySelectorAll("img")].find((i) => i.src === r.data_uri);
        rec.img = img ? {complete: img.complete, width: img.naturalWidth,
                         height: img.naturalHeight} : null;
      } else if (r.mime_type === "text/html") {
        app.setView({content: "html", contentPath: r.data_uri, resultPath: path});
        const find = () => [...document.querySelectorAll("iframe")].find(
          (f) => f.src === r.data_uri);
        await until(find, 5000);
        const frame = find();
        const b64 = r.data_uri.split(",")[1];
        rec.html = frame ? {shown: true, rows: (atob(b64).match(/<tr>/g) || []).length} : null;
      } else {
        const link = [...document.querySelectorAll("a")].find((a) => a.href === r.data_uri);
        rec.download = !!link;
      }
      out.results[path] = rec;
    }
    const pre = document.createElement("pre");
    pre.id = "cmpipe-check";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  async function shot(path) {
    await until(ready, 30000);
    const r = results[path];
    app.showResultInfo(path);
    await until(() => appText().includes("Config:"), 5000);
    const content = r.mime_type === "text/html" ? "html" : "img";
    app.setView({content: content, contentPath: r.data_uri, resultPath: path});
  }
  window.addEventListener("load", () => {
    const m = location.hash.match(/^#shot=(.*)$/);
    (m ? shot(decodeURIComponent(m[1])) : check()).catch((err) => {
      const pre = document.createElement("pre");
      pre.id = "cmpipe-check";
      pre.textContent = JSON.stringify({error: String(err), stack: err.stack});
      document.body.appendChild(pre);
    });
  });
})();
</script>
"""


def _chromium():
    """Path of a Chromium binary; installs Debian's package when missing (root + apt-get)."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and cannot be (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}"
    path = shutil.which("chromium")
    assert path, "apt-get installed chromium but there is no chromium on PATH"
    return path


def _browser(chromium, *args, timeout=180):
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--window-size=1400,1000", "--virtual-time-budget=60000",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _caption_title(name):
    """The bold first phrase of a caption file (what a reader sees first)."""
    text = (CAPTIONS / f"{name}.rst").read_text()
    return re.search(r"\*\*(.+?)\*\*", text, re.S).group(1).replace("\n", " ")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    wd, res = tiny_survey_run(tmp_path_factory, everything=True)
    out = tmp_path_factory.mktemp("report") / "report.html"
    proc = _snakemake(wd, "--report", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.is_file() and out.stat().st_size > 100_000
    return wd, res, out


@pytest.fixture(scope="module")
def rendered(report, tmp_path_factory):
    """What the report's page shows in Chromium, per result (see DRIVER)."""
    _, _, html = report
    chromium = _chromium()
    page = tmp_path_factory.mktemp("page") / "report.html"
    text = html.read_text()
    # the page's own </body> is the last one (a bundled library has the string as well)
    head, body_end, tail = text.rpartition("</body>")
    assert body_end and tail.strip() == "</html>", tail[:200]
    page.write_text(head + DRIVER + body_end + tail)
    proc = _browser(chromium, "--dump-dom", page.as_uri())
    m = re.search(r'<pre id="cmpipe-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the driver wrote no result (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    import html as html_lib
    data = json.loads(html_lib.unescape(m.group(1)))
    assert "error" not in data, data
    return page, chromium, data


def test_report_has_every_figure_and_table_with_its_caption(report, rendered):
    wd, res, _ = report
    _, _, data = rendered
    shown = {p.removeprefix("results/tiny/"): r for p, r in data["results"].items()}
    # every figure the run made is in the report, and the key tables
    figures = {str(p.relative_to(res)) for p in (res / "figures").glob("*.png")}
    assert len(figures) >= 15 and figures <= set(shown), sorted(figures - set(shown))
    assert set(EXPECTED) <= set(shown), sorted(set(EXPECTED) - set(shown))
    for path, caption in EXPECTED.items():
        rec = shown[path]
        title = _caption_title(caption)
        # the caption, rendered from reStructuredText by the report, in the info panel
        assert title in re.sub(r"\s+", " ", rec["info"]), (path, title, rec["info"][:500])
        assert "How to read it" in rec["info"] and "Config:" in rec["info"], path
        if path.endswith(".png"):
            img = rec["img"]
            assert img and img["complete"], (path, img)
            assert img["width"] > 300 and img["height"] > 200, (path, img)
        elif path.endswith(".html"):
            csv_rows = len((res / {"metrics": "evaluation/metrics.csv",
                                   "comparison": "comparison/summary.csv",
                                   "mass_function": "survey/mass_function.csv",
                                   "posteriors": "survey/posteriors.csv"}[Path(path).stem]
                            ).read_text().splitlines())
            # header row + one row per CSV line
            assert rec["html"] and rec["html"]["rows"] == csv_rows, (path, rec["html"])
        else:
            assert rec["download"], path


def test_report_follows_the_stages_and_renders_config_values(rendered):
    _, _, data = rendered
    assert sorted(data["categories"]) == STAGES
    menu = data["menu"]
    # the menu lists the stages in pipeline order
    assert [menu.find(stage) for stage in STAGES] == sorted(menu.find(s) for s in STAGES)
    assert menu.find(STAGES[0]) > 0
    # the workflow description (workflow.rst) is the landing page, with the tiny config's
    # values filled in by the report's template engine
    assert "cmpipe: dynamical galaxy-cluster masses" in menu
    assert "Run tiny (seed 7" in re.sub(r"\s+", " ", menu)
    assert "KDE cubes of 24^3 voxels" in re.sub(r"\s+", " ", menu)
    loss = re.sub(r"\s+", " ", data["results"]["results/tiny/figures/loss_curve.png"]["info"])
    assert "epochs = 3" in loss


def test_metrics_table_matches_metrics_json(report):
    _, res, _ = report
    metrics = json.loads((res / "evaluation/metrics.json").read_text())
    rows = [ln.split(",") for ln in (res / "evaluation/metrics.csv").read_text().splitlines()]
    header, body = rows[0], {r[0]: r[1:] for r in rows[1:]}
    assert header == ["metric", "cnn3d_sbi", *metrics["baselines"]]
    assert float(body["scatter_dex"][0]) == pytest.approx(metrics["scatter_dex"], rel=1e-5)
    assert float(body["coverage_68"][0]) == pytest.approx(metrics["coverage_68"], rel=1e-5)
    for i, name in enumerate(metrics["baselines"], start=1):
        assert float(body["scatter_dex"][i]) == pytest.approx(
            metrics[f"{name}_scatter_dex"], rel=1e-5)
    assert body["coverage_68"][1:] == [""] * len(metrics["baselines"])


def test_screenshot_shows_a_figure_with_its_caption(rendered, tmp_path_factory):
    page, chromium, _ = rendered
    png = tmp_path_factory.mktemp("shot") / "report.png"
    url = page.as_uri() + "#shot=" + SHOT
    proc = _browser(chromium, f"--screenshot={png}", url)
    assert png.is_file(), proc.stderr[-3000:]
    from PIL import Image

    img = Image.open(png).convert("RGB")
    assert img.size == (1400, 1000)
    # a rendered page with a figure has thousands of colours; a blank one has a few
    assert len(img.getcolors(maxcolors=1 << 20) or []) > 1000
    print(f"\n[report] screenshot: {png}")
