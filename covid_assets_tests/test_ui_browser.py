"""The Dagster UI in a real browser: the asset graph, "Materialize all", and a summary asset's page.

Starts `dagster-webserver` on the code location (a real Postgres warehouse, the bundled snapshot
as source, a throwaway DAGSTER_HOME), drives Debian's Chromium with Playwright, and saves
screenshots under pytest's tmp dir. With UPDATE_SCREENSHOTS=1 it also writes the README's
picture, docs/asset-graph.png.

Skipped, with the reason, when Playwright or Chromium is missing (`.ci/run` installs both).
Never downloads a browser: it uses the system Chromium (`CHROMIUM` overrides the path).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from covid_assets_tests.helpers import SNAPSHOT, free_port, query

ROOT = Path(__file__).parents[1]
README_SCREENSHOT = ROOT / "docs" / "asset-graph.png"

# Leaf name shown on the node -> (asset key, group box it is drawn in).
ASSETS = {
    "raw_covid_test_results": ("covid_19_raw/raw_covid_test_results", "ingestion"),
    "covid_test_results": ("covid_19/covid_test_results", "warehouse"),
    "outcome_results": ("covid_19/outcome_results", "reporting"),
    "state_results": ("covid_19/state_results", "reporting"),
    "smoothed_results": ("covid_19/smoothed_results", "reporting"),
    "total_results": ("covid_19/total_results", "reporting"),
    "recent_positivity_results": ("covid_19/recent_positivity_results", "reporting"),
    "revisions": ("covid_19/revisions", "reporting"),
}
REPORTING = ["outcome_results", "state_results", "smoothed_results", "total_results", "recent_positivity_results", "revisions"]
# The published dataset: an observable source asset upstream of the raw table (observed, never materialized).
SOURCE = "covid_pcr_testing_time_series"
NODES = {**ASSETS, SOURCE: ("socrata/covid_pcr_testing_time_series", "ingestion")}
EDGES = (
    {(SOURCE, "raw_covid_test_results"), ("raw_covid_test_results", "covid_test_results")}
    | {("covid_test_results", name) for name in REPORTING}
)
# The other declared dataset of the code location (covid_assets/defs/cdc_cases_deaths_by_state), in its own group.
DECLARED = {
    "cdc_cases_deaths_by_state": ("socrata/cdc_cases_deaths_by_state", "cdc_cases_deaths"),
    "raw_cases_deaths_by_state": ("cdc_raw/raw_cases_deaths_by_state", "cdc_cases_deaths"),
    "cases_deaths_by_state": ("cdc/cases_deaths_by_state", "cdc_cases_deaths"),
}
ALL_NODES = {**NODES, **DECLARED}
ALL_EDGES = EDGES | {("cdc_cases_deaths_by_state", "raw_cases_deaths_by_state"), ("raw_cases_deaths_by_state", "cases_deaths_by_state")}

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps calling home (updates, sync, field trials) on a closed network.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1920, "height": 1080}  # wide enough that the six reporting tables, side by side, are drawn in full

# The nodes and edges as drawn: every asset node (its <foreignObject> in the graph's SVG, with the
# name it shows and the group box it sits in) and every edge (an SVG path ending in an arrow),
# each edge attributed to the nodes its two ends touch. All in the SVG's own coordinates.
READ_GRAPH_JS = """
(svg) => {
  const rect = (el) => ({x: +el.getAttribute('x'), y: +el.getAttribute('y'),
                         w: +el.getAttribute('width'), h: +el.getAttribute('height')});
  const inside = (a, b) => a.x >= b.x && a.y >= b.y && a.x + a.w <= b.x + b.w && a.y + a.h <= b.y + b.h;
  const groups = [...svg.querySelectorAll(':scope > foreignObject.group')].map((el) => ({
    name: el.querySelector('[data-tooltip]').getAttribute('data-tooltip'), ...rect(el)}));
  const nodes = [...svg.querySelectorAll(':scope > foreignObject')]
    .filter((el) => el.querySelector('[class*="assetNodeBox"]'))
    .map((el) => {
      const r = rect(el);
      const name = el.querySelector('[class*="assetName"] [data-tooltip]').getAttribute('data-tooltip');
      const group = groups.filter((g) => inside(r, g)).map((g) => g.name);
      return {name, group, ...r};
    });
  const distance = (p, n) => Math.hypot(Math.max(n.x - p.x, 0, p.x - n.x - n.w),
                                        Math.max(n.y - p.y, 0, p.y - n.y - n.h));
  const nearest = (p) => {
    const ranked = nodes.map((n) => [distance(p, n), n.name]).sort((a, b) => a[0] - b[0]);
    return ranked.length && ranked[0][0] <= 20 ? ranked[0][1] : null;
  };
  const edges = [...svg.querySelectorAll(':scope > path[marker-end]')].map((path) => {
    const length = path.getTotalLength();
    return [nearest(path.getPointAtLength(0)), nearest(path.getPointAtLength(length))];
  });
  return {nodes, edges};
}
"""

# True once the graph's pan/zoom transform is the same on two polls in a row (animation done).
VIEWPORT_SETTLED_JS = """
() => {
  const t = document.querySelector('[data-svg-viewport] > div').style.transform;
  const settled = t !== '' && window.__lastGraphTransform === t;
  window.__lastGraphTransform = t;
  return settled;
}
"""

pytestmark = pytest.mark.slow


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
def webserver(warehouse_url: str, tmp_path: Path) -> Iterator[str]:
    """`dagster-webserver` on the code location, writing to `warehouse_url`; yields its base URL."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    # The runs launched from the UI start at once (the default for an empty config would queue
    # them for a dagster-daemon); no telemetry. Not the repo's dagster.yaml: that one wants a
    # Postgres for Dagster's own storage.
    (dagster_home / "dagster.yaml").write_text(
        "run_coordinator:\n"
        "  module: dagster._core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
        "telemetry:\n"
        "  enabled: false\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "COVID_DB_URL": warehouse_url,
        "SOCRATA_SOURCE_FILE": str(SNAPSHOT),
        "SOCRATA_OFFLINE": "1",  # every other declared dataset reads its bundled export
    }
    log_path = tmp_path / "webserver.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "dagster_webserver",
                "-h", "127.0.0.1", "-p", str(port), "-m", "covid_assets.definitions",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the code server and run workers go with it
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"dagster-webserver exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver did not answer on {base_url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """The system Chromium, or a skip that says what is missing (requested first: nothing starts in vain)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install -e '.[test]')")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium at /usr/bin/chromium or $CHROMIUM (apt-get install chromium; .ci/run does it)")
    return chromium


@pytest.fixture
def browser_page(chromium_executable: str):
    """A Chromium page at 1600x1000, closed before the webserver is stopped."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


@pytest.mark.timeout(300)
def test_asset_graph_materialize_all_and_a_summary_page(
    chromium_executable: str, webserver: str, browser_page, warehouse_url: str, tmp_path: Path
) -> None:
    # chromium_executable first: without a browser the test skips before Postgres or Dagster start.
    from playwright.sync_api import expect

    page = browser_page
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")

    graph = page.locator("[data-svg-viewport]")
    svg = graph.locator("svg[class*='svgContainer']")
    groups = svg.locator(":scope > foreignObject.group")
    node_boxes = svg.locator(":scope > foreignObject:has([class*='assetNodeBox'])")

    def node(name: str):
        return node_boxes.filter(has=page.locator(f"[class*='assetName'] [data-tooltip='{name}']"))

    def open_graph(first_visit: bool = False) -> None:
        """The global asset graph, without the asset tree beside it."""
        if first_visit:
            with page.expect_response(lambda response: response.url.endswith("/graphql?op=ShouldShowNux")) as nux:
                page.goto(f"{webserver}/asset-groups")
            if nux.value.json()["data"]["shouldShowNux"]:
                # The one-time "Join the Dagster community" dialog (on a fresh DAGSTER_HOME it opens
                # a second after the page loads): skip it before it can swallow a click.
                community = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
                community.get_by_role("button", name="Skip").click()
                expect(community).to_be_hidden()
        else:
            page.goto(f"{webserver}/asset-groups")
        expect(groups).to_have_count(4)  # ingestion, warehouse, reporting, and the CDC dataset's
        # Hide the asset tree beside the graph (the main navigation's state is remembered, this is not).
        page.locator("button:has([aria-label='panel_show_right']):not(:has-text('navigation'))").click()
        expect(page.get_by_placeholder("Jump to…")).to_be_hidden()

    def zoom_to_fit() -> None:
        # The graph's own "double-click the background to fit" gesture, sent to the viewport
        # element itself (a mouse double-click could land on a node). Only the nodes on screen
        # are rendered, so retried until all eight are: the first double-click can come before
        # the graph has taken its expanded layout.
        deadline = time.monotonic() + 20
        while True:
            page.evaluate("window.__lastGraphTransform = null")
            graph.dispatch_event("dblclick")
            page.wait_for_function(VIEWPORT_SETTLED_JS, polling=250, timeout=10_000)
            if node_boxes.count() == len(ALL_NODES) or time.monotonic() > deadline:
                break
        expect(node_boxes).to_have_count(len(ALL_NODES))
        for name in ALL_NODES:
            expect(node(name).locator("[class*='assetNodeBox']")).to_be_in_viewport(ratio=1)  # all of it on screen

    def picture(path: Path) -> None:
        box = graph.bounding_box()
        page.mouse.move(box["x"] + 10, box["y"] + box["height"] - 10)  # on the background: no hover highlight
        page.screenshot(path=path)

    # 1. The asset graph: nine nodes (the observed source and the eight tables) in their three groups, and the eight edges.
    open_graph(first_visit=True)
    page.get_by_role("button", name="Hide navigation").click()
    # Groups start collapsed: open them all, and lay the graph out top-down (the six reporting tables side by side).
    page.locator("button:has([aria-label='settings'])").last.click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.get_by_role("menuitem", name="vertical orientation").click()
    page.keyboard.press("Escape")
    zoom_to_fit()
    for name in ASSETS:
        expect(node(name)).to_contain_text("Never materialized")
    drawn = svg.evaluate(READ_GRAPH_JS)
    assert {drawn_node["name"]: drawn_node["group"] for drawn_node in drawn["nodes"]} == {
        name: [group] for name, (_, group) in ALL_NODES.items()
    }
    # A set: an edge under the mouse is drawn a second time, highlighted.
    assert set(map(tuple, drawn["edges"])) == ALL_EDGES, drawn["edges"]
    picture(shots / "01-asset-graph.png")

    # 2. "Materialize all": every node turns "Materialized", and the run (its asset checks
    # run after the last materialization) ends in "Success" on the Runs page.
    page.get_by_role("button", name="Materialize all").click()
    for name in ASSETS:
        expect(node(name).get_by_text("Materialized", exact=True)).to_be_visible(timeout=120_000)
    page.locator("nav a[href='/runs']").click()
    run_status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$"))
    expect(run_status).to_have_count(1, timeout=120_000)
    expect(run_status).to_have_text("Success")
    page.screenshot(path=shots / "02-runs.png")
    for key, _ in ASSETS.values():
        table = key.replace("/", ".")
        assert query(warehouse_url, "SELECT to_regclass(%s)", (table,))[0][0] is not None, f"no table {table}"

    # The graph once more, loaded after the run (groups stay open, top-down): all materialized.
    open_graph()
    zoom_to_fit()
    for name in ASSETS:
        expect(node(name).get_by_text("Materialized", exact=True)).to_be_visible()
    picture(shots / "03-asset-graph-materialized.png")
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shots / "03-asset-graph-materialized.png", README_SCREENSHOT)

    # 3. One summary asset: select its node, then its page in the catalog, with the row count
    # and the column schema of the table in Postgres.
    node("state_results").locator("[class*='assetName'] [data-tooltip]").click()
    expect(page.get_by_role("heading", name="covid_19 / state_results")).to_be_visible()
    page.get_by_role("link", name="View in Asset Catalog").click()
    expect(page).to_have_url(f"{webserver}/assets/covid_19/state_results")

    (row_count,) = query(warehouse_url, "SELECT count(*) FROM covid_19.state_results")[0]
    assert row_count == 56
    row_count_box = page.get_by_text("Row count", exact=True).locator("xpath=..")
    expect(row_count_box).to_have_text(re.compile(rf"^Row count\s*{row_count}$"))

    columns = query(
        warehouse_url,
        "SELECT attname, upper(format_type(atttypid, atttypmod)) FROM pg_attribute "
        "WHERE attrelid = 'covid_19.state_results'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    assert [name for name, _ in columns][:2] == ["state", "state_name"]
    schema_rows = page.locator("table").filter(has_text="Column name").locator("tbody > tr")
    expect(schema_rows).to_have_count(len(columns))
    for row, (column, column_type) in zip(schema_rows.all(), columns):
        expect(row.locator("td").nth(0)).to_have_text(column)
        expect(row.locator("td").nth(1)).to_have_text(column_type)
    page.screenshot(path=shots / "04-state-results.png", full_page=True)
