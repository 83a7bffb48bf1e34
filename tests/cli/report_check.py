"""Checks of `knockout report` (issue 18), used by test_demo_sweep.py on the demo sweep's store.

check_report(): the page is one self-contained file (no script, stylesheet, image or font from
anywhere, a Content-Security-Policy of default-src 'none'); every section of the demo sweep's
stages is there with its figures; the numbers behind the figures (the CSV downloads, decoded
here) equal what `knockout results --format jsonl` prints, and C equals TE - DE computed here;
then the page is rendered in headless Chromium, which must see every section, make no request of
its own (Chromium's net log: no request initiated by the page; a control page with an external
image proves the check sees one), and leaves a screenshot in the build tree.
check_partial_report(): a sweep stopped part way still gets a page, with what exists so far.
"""
import base64
import csv
import html.parser
import io
import json
import os
import shutil
import subprocess
import tempfile

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


class Page(html.parser.HTMLParser):
    """What the checks need from the page: sections, figures, SVGs, links, tags."""

    def __init__(self):
        super().__init__()
        self.tags = {}
        self.sections = []          # section ids, in order
        self.svgs = {}              # section id -> [svg class]
        self.figures = {}           # figure id -> section id
        self.downloads = {}         # figure id -> CSV text
        self.csp = ""
        self.urls = []              # every src / href / xlink:href
        self.rect_titles = 0
        self._section = None
        self._figure = None
        self._in_rect = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for key in ("src", "href", "xlink:href", "srcset", "poster", "data"):
            if key in a:
                self.urls.append(a[key])
        if tag == "meta" and a.get("http-equiv", "").lower() == "content-security-policy":
            self.csp = a.get("content", "")
        if tag == "section":
            self._section = a.get("id")
            self.sections.append(self._section)
        if tag == "figure":
            self._figure = a.get("id")
            self.figures[self._figure] = self._section
        if tag == "svg":
            self.svgs.setdefault(self._section, []).append(a.get("class", ""))
        if tag == "a" and "download" in a:
            prefix = "data:text/csv;base64,"
            assert a["href"].startswith(prefix), a["href"][:60]
            self.downloads[self._figure] = base64.b64decode(a["href"][len(prefix):]).decode()
        if tag == "rect" and a.get("class") == "cell":
            self._in_rect = True

    def handle_endtag(self, tag):
        if tag == "rect":
            self._in_rect = False

    def handle_data(self, data):
        pass


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def jsonl(knockout, store, *args):
    out = run([knockout, *args, "--store", store, "--format", "jsonl"])
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def page_requests(net_log):
    """Requests the page itself started, from Chromium's net log (browser-internal requests have
    no origin as their initiator)."""
    with open(net_log) as f:
        log = json.load(f)
    types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls, page_sources = {}, set()
    for event in log.get("events", []):
        params = event.get("params", {})
        source = event["source"]["id"]
        if "url" in params:
            urls.setdefault(source, params["url"])
        if types.get(event["type"]) == "URL_REQUEST_START_JOB" and "initiator" in params:
            if params["initiator"] != "not an origin":
                page_sources.add(source)
    return sorted(urls.get(s, f"source {s}") for s in page_sources)


def render(chromium, html_path, out_dir, name):
    """Screenshot, DOM and net log of one page in headless Chromium."""
    profile = tempfile.mkdtemp(prefix="knockout-chromium-")
    try:
        net_log = os.path.join(out_dir, name + ".netlog.json")
        screenshot = os.path.join(out_dir, name + ".png")
        url = "file://" + os.path.abspath(html_path)
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/a",
                        "--window-size=1200,2600", f"--screenshot={screenshot}",
                        f"--log-net-log={net_log}", url],
                       capture_output=True, text=True, timeout=120, check=True)
        dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/b",
                              "--dump-dom", url],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        return screenshot, dom, page_requests(net_log)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def check_report(knockout, store, out_dir, check):
    os.makedirs(out_dir, exist_ok=True)
    report = os.path.join(out_dir, "demo-report.html")
    out = run([knockout, "report", "demo-hydra", "--store", store, "--out", report])
    check(out.strip() == f"wrote {report}", "knockout report says where it wrote")
    with open(report) as f:
        text = f.read()
    page = Page()
    page.feed(text)

    # Self-contained: nothing to fetch, and the browser is told so.
    check("default-src 'none'" in page.csp, f"the page forbids every fetch (CSP {page.csp!r})")
    check(not any(t in page.tags for t in ("script", "link", "img", "iframe", "object", "embed")),
          f"no script, stylesheet, image or frame tags (tags: {sorted(page.tags)})")
    external = [u for u in page.urls if not (u.startswith("#") or u.startswith("data:"))]
    check(not external, f"every link is in-page or data: ({external[:3]})")
    check("url(" not in text and "@import" not in text, "the style loads nothing")

    # Every stage of the demo sweep has its section, with its figures.
    expected = ["sweep", "stage-refusal", "stage-harm", "stage-select", "stage-heads",
                "stage-directions", "stage-neurons", "stage-hydra", "stage-generate",
                "stage-orthogonalized"]
    check(page.sections == expected, f"sections in stage order: {page.sections}")
    svgs = page.svgs
    check(svgs.get("stage-heads", []).count("heatmap") >= 3,
          f"heads: TE, DE and C heatmaps ({svgs.get('stage-heads')})")
    for section in ("stage-refusal", "stage-select", "stage-directions", "stage-hydra",
                    "stage-generate", "stage-orthogonalized"):
        check(svgs.get(section, []).count("chart") >= 1, f"{section}: a chart")
    figures_without_csv = [f for f in page.figures if f not in page.downloads]
    check(not figures_without_csv, f"every figure has its CSV ({len(page.figures)} figures)")

    # The numbers: the heads heatmaps against `knockout results --stage heads`.
    rows = [r for r in jsonl(knockout, store, "results", "demo-hydra", "--stage", "heads")
            if r["table"] == "results"]
    by_key = {(r["layer"], r["unit"], r["ablation"], r["positions"], r["prompt_set"]): r for r in rows}
    checked = {"te": 0, "de": 0, "c": 0}
    for figure, body in page.downloads.items():
        if page.figures.get(figure) != "stage-heads":
            continue
        for record in csv.DictReader(io.StringIO(body)):
            r = by_key[(int(record["layer"]), int(record["head"]), record["ablation"],
                        record["positions"], record["prompt_set"])]
            for key in checked:
                if key in record:
                    want = r["te"] - r["de"] if key == "c" else r[key]
                    got = float(record[key])
                    assert abs(got - want) <= 1e-12 * max(1.0, abs(want)), (figure, record, want)
                    checked[key] += 1
    check(all(n == len(rows) for n in checked.values()),
          f"heatmap numbers equal the results rows, C = TE - DE ({checked}, {len(rows)} rows)")
    cells = text.count('class="cell"')
    check(cells == 3 * len(rows), f"one hoverable cell per head and value ({cells})")

    # The hydra: the backups that rose when a downstream latent was knocked out.
    backups = {f: b for f, b in page.downloads.items() if f.startswith("fig-hydra-backups-of")}
    check(len(backups) >= 1,
          f"hydra: backups figures of the strongest downstream knockouts ({sorted(backups)})")
    for figure, body in backups.items():
        rows = list(csv.DictReader(io.StringIO(body)))
        assert rows, figure
        for r in rows:
            assert abs(float(r["ablated"]) - float(r["clean"]) - float(r["rise"])) <= 1e-9 * max(
                1.0, abs(float(r["rise"]))), (figure, r)
    check(True, "backups: rise = ablated - clean in every row")

    # Refusal rates as `knockout results --stage generate` has them.
    rates = {(r["condition"], r["prompt_set"]): r["refusal_rate"]
             for r in jsonl(knockout, store, "results", "demo-hydra", "--stage", "generate")
             if r["table"] == "refusal"}
    generate = [b for f, b in page.downloads.items()
                if page.figures.get(f) == "stage-generate" and "refusal_rate" in b.splitlines()[0]]
    shown = {(r["condition"], r["prompt_set"]): float(r["refusal_rate"])
             for r in csv.DictReader(io.StringIO(generate[0]))}
    check(shown == rates, f"refusal rates as stored ({len(shown)} cells)")

    # In a real browser.
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("KNOCKOUT_NO_BROWSER") == "1":
            print("SKIP: the browser checks (KNOCKOUT_NO_BROWSER=1 and no chromium)")
            return
        check(False, "chromium is installed (scripts/setup.sh installs it; "
                     "KNOCKOUT_NO_BROWSER=1 skips the browser checks)")
    control = os.path.join(out_dir, "control.html")
    with open(control, "w") as f:
        f.write('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    _, _, control_requests = render(chromium, control, out_dir, "control")
    check(any("127.0.0.1:9" in u for u in control_requests),
          f"the net-log check sees a page's request (control page: {control_requests})")
    screenshot, dom, requests = render(chromium, report, out_dir, "demo-report")
    check(not requests, f"the report made no network request in Chromium ({requests})")
    check(os.path.getsize(screenshot) > 20000, f"screenshot saved: {screenshot}")
    for section in expected:
        check(f'id="{section}"' in dom, f"Chromium's DOM has section {section}")
    check(dom.count("<svg") == text.count("<svg"), "Chromium parsed every chart")


def check_partial_report(knockout, store, out_dir, check):
    """A sweep stopped part way (the resumption test's first, killed run)."""
    report = os.path.join(out_dir, "partial-report.html")
    run([knockout, "report", "demo-hydra", "--store", store, "--out", report])
    with open(report) as f:
        text = f.read()
    page = Page()
    page.feed(text)
    check(page.sections[:1] == ["sweep"] and "waiting" in text,
          f"a running sweep's page shows what exists and the stages still waiting ({page.sections})")
