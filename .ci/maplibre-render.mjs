// Used by .ci/tile-clients: opens .ci/maplibre.html in headless Chromium
// (Debian's, software WebGL through SwiftShader) with playwright-core, waits
// until its three maps have put their canvases in the page (at most 30 s),
// and writes the page to OUT for .ci/tile_clients.py. Console messages and
// page errors go to stderr.
//   node maplibre-render.mjs URL OUT
import { writeFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [url, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error("console:", m.text()));
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(url);
  const drawn = () => ["raster", "vector", "archive"].every((n) => document.getElementById(n).textContent.length > 0);
  await page.waitForFunction(drawn, null, { timeout: 30000 }).catch((e) => console.error("not every map drew:", e.message));
  writeFileSync(out, await page.content());
} finally {
  await browser.close();
}
