// Used by .ci/console: drives the console in headless Chromium (Debian's,
// through playwright-core) with the browser's network limited to tessera:
// any request for another origin is aborted and counted. Checks that every
// chart, the device timeline (with its gap), a coverage picture and the log
// viewer draw something, that the page without JavaScript shows its tables,
// and times the page's load over a large appliance. Writes screenshots to
// OUTDIR. Prints "ok ..." / "FAIL ..." lines and "load_ms ..." figures.
//   node console.mjs BASE LARGE_BASE OUTDIR
import { chromium } from "playwright-core";

const [base, largeBase, outdir] = process.argv.slice(2);
let failed = 0;
const check = (name, ok, detail) => {
  if (!ok) failed++;
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${detail === undefined ? "" : ": " + detail}`);
};
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
const outside = [];
async function context(options = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1300, height: 900 }, ...options });
  await ctx.route("**/*", (route) => {
    const url = route.request().url();
    const allowed = [base, largeBase].some((b) => url.startsWith(b + "/"));
    if (allowed) return route.continue();
    outside.push(url);
    return route.abort();
  });
  return ctx;
}
try {
  const ctx = await context();
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(base + "/");
  // The figures need two samples (5 s apart) and the load's requests.
  const charts = ["requests", "bytes", "status", "latency", "connections", "cache", "changes"];
  // A line: a path of several points, none of them NaN.
  const drawn = (ids) =>
    ids.every((c) => {
      const paths = [...document.querySelectorAll(`#chart-${c} path`)].map((p) => p.getAttribute("d") || "");
      return paths.some((d) => d.length > 10) && paths.every((d) => !d.includes("NaN"));
    });
  await page.waitForFunction(drawn, charts, { timeout: 30000 }).catch(() => {});
  for (const c of charts) {
    const ok = await page.evaluate(drawn, [c]);
    check(`chart ${c} draws a line`, ok);
  }
  const rate = await page.evaluate(() => parseFloat(document.getElementById("v-requests").textContent));
  check("the request rate under load is above zero", rate > 0, rate);
  check("the plain tables are replaced", await page.evaluate(() => document.getElementById("plain").hidden));
  await page.screenshot({ path: `${outdir}/console.png` });

  const rows = () => document.querySelectorAll("#timeline g[data-i]").length;
  await page.waitForFunction(rows, null, { timeout: 10000 }).catch(() => {});
  await page.fill("#dev-filter", "pump-station");
  await page.waitForTimeout(300);
  const timeline = await page.evaluate(() => {
    const bars = [...document.querySelectorAll("#timeline rect.bar")];
    const size = (r, a) => parseFloat(r.getAttribute(a));
    return {
      rows: document.querySelectorAll("#timeline g[data-i]").length,
      bars: bars.length,
      placed: bars.every((r) => Number.isFinite(size(r, "x")) && size(r, "width") >= 1),
      wide: bars.filter((r) => size(r, "width") > 3).length,
      gaps: document.querySelectorAll("#timeline rect.gap").length,
    };
  });
  check("the timeline draws rows and bars", timeline.rows >= 2 && timeline.bars >= 4 && timeline.placed && timeline.wide >= 2, JSON.stringify(timeline));
  check("the quiet day of pump-station-gap shows as a gap", timeline.gaps >= 1, JSON.stringify(timeline));
  await page.locator("#devices").screenshot({ path: `${outdir}/timeline.png` });

  const card = page.locator('[id="coverage-world"]');
  await card.scrollIntoViewIfNeeded();
  await page.waitForFunction(() => {
    const p = document.querySelector('[id="coverage-world"] path');
    return p && (p.getAttribute("d") || "").length > 10;
  }, null, { timeout: 10000 }).catch(() => {});
  const coverage = await page.evaluate(() => (document.querySelector('[id="coverage-world"] path') || {}).getAttribute?.("d")?.length || 0);
  check("the coverage of world draws its tiles", coverage > 10, `path of ${coverage} characters`);
  await page.locator("#tilesets").screenshot({ path: `${outdir}/coverage.png` });

  // The log viewer: the gap device's newest file, from the timeline.
  await page.fill("#dev-filter", "pump-station-gap");
  await page.waitForTimeout(300);
  await page.locator("#timeline rect.bar").last().dispatchEvent("click");
  await page.waitForFunction(() => document.getElementById("logview").textContent.split("\n").length > 10, null, { timeout: 10000 }).catch(() => {});
  const lines = await page.evaluate(() => document.getElementById("logview").textContent.trim().split("\n"));
  check("the log viewer shows the span's lines", lines.length > 10 && lines[0].includes("pump-station-gap"), `${lines.length} lines`);
  const download = await page.evaluate(() => document.getElementById("log-dl").getAttribute("href"));
  check("the span can be downloaded", /\/logs\/pump-station-gap\/\.lines\?since=/.test(download || ""), download);
  await page.locator("#logs").scrollIntoViewIfNeeded();
  await page.locator("#logs").screenshot({ path: `${outdir}/logview.png` });
  check("no script error", errors.length === 0, errors.join("; "));
  check("the page reports no failed fetch", !(await page.evaluate(() => document.getElementById("state").classList.contains("bad"))),
    await page.evaluate(() => document.getElementById("state").textContent));
  // A device and a tileset named like markup: shown as text, never run.
  await page.fill("#dev-filter", "img");
  await page.waitForTimeout(300);
  const hostile = await page.evaluate(() => ({
    pwned: window.pwned,
    shown: document.getElementById("timeline").textContent.includes("<img src=x"),
  }));
  check("names are text, not markup", hostile.pwned === undefined && hostile.shown, JSON.stringify(hostile));
  await ctx.close();

  // Without JavaScript: the plain tables.
  const plain = await context({ javaScriptEnabled: false });
  const p2 = await plain.newPage();
  await p2.goto(base + "/");
  const tables = await p2.evaluate(() => document.querySelectorAll("#plain table").length);
  const visible = await p2.isVisible("#plain table >> nth=0");
  check("without JavaScript the tables show", tables >= 2 && visible, `${tables} tables`);
  await plain.close();

  // Page load over 1,000 devices and 100 tilesets: navigation to the first
  // draw of the timeline and the tileset cards, five times.
  const times = [];
  for (let i = 0; i < 5; i++) {
    const c = await context();
    const p = await c.newPage();
    await p.goto(largeBase + "/");
    await p.waitForFunction(() => document.querySelectorAll("#timeline g[data-i]").length > 0 && document.querySelectorAll("#ts-grid > *").length >= 100, null, { timeout: 20000 });
    times.push(await p.evaluate(() => performance.now()));
    await c.close();
  }
  times.sort((a, b) => a - b);
  console.log(`load_ms median ${times[2].toFixed(0)} min ${times[0].toFixed(0)} max ${times[4].toFixed(0)}`);
  check("the large console loads", times.length === 5);
  check("nothing was asked of another origin", outside.length === 0, outside.slice(0, 3).join(", "));
} finally {
  await browser.close();
}
console.log(`console browser checks: ${failed} failed`);
process.exit(failed ? 1 : 0);
