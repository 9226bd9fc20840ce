// Loads mcpsm's status page in headless Chromium (Debian's `chromium`, driven by
// playwright-core: no browser download) and checks it, for tests/it/status_page.rs.
//
//   node status_page.mjs URL SCREENSHOT BUSY_DAEMON OTHER_DAEMON
//
// URL is the one-time URL `mcpsm status --open` printed. Checks: both daemons have a row,
// ready, with a pid and at least one session; BUSY_DAEMON's request count changes while the
// page is open (the test keeps calling tools through a proxy) with no reload; the page drew
// its SVG chart; the URL does not work a second time. Saves a screenshot to SCREENSHOT.
// Prints one JSON line with what it saw; exits non-zero with a reason on any failure.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, screenshot, busy, other] = process.argv.slice(2);
if (!url || !screenshot || !busy || !other) {
  console.error("usage: node status_page.mjs URL SCREENSHOT BUSY_DAEMON OTHER_DAEMON");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!existsSync(executablePath)) {
  console.error(`${executablePath} is missing: install Debian's chromium (\`sudo apt-get install -y chromium\`; .ci/run does it in CI)`);
  process.exit(3);
}

const LIMIT_MS = 60_000;
const profile = mkdtempSync(join(tmpdir(), "mcpsm-chromium-"));
let context;
function fail(why) {
  throw new Error(why);
}

try {
  // A fresh profile (--user-data-dir) for every run.
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1400, height: 560 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  const response = await page.goto(url, { waitUntil: "load", timeout: LIMIT_MS });
  if (!response || response.status() !== 200) fail(`the page answered ${response && response.status()}`);
  if (new URL(page.url()).search !== "") fail(`the ticket stayed in the address bar: ${page.url()}`);

  const cell = (daemon, field) =>
    page.locator(`tr[data-daemon="${daemon}"] td[data-field="${field}"]`);
  const rows = {};
  for (const name of [busy, other]) {
    await cell(name, "state").filter({ hasText: "ready" }).waitFor({ timeout: LIMIT_MS });
    const pid = (await cell(name, "pid").textContent()).trim();
    if (!/^\d+$/.test(pid)) fail(`daemon ${name} has no pid on the page: ${pid}`);
    // Sessions are reported by the proxies (HTTP daemons) or the host (stdio daemons).
    await page.waitForFunction(
      ([n]) => Number(document.querySelector(`tr[data-daemon="${n}"] td[data-field="sessions"]`)?.textContent) >= 1,
      [name], { timeout: LIMIT_MS });
    rows[name] = { pid: Number(pid) };
  }

  // Live: the request count changes while the page stays loaded.
  const first = Number((await cell(busy, "requests").textContent()).trim());
  await page.waitForFunction(
    ([n, before]) => Number(document.querySelector(`tr[data-daemon="${n}"] td[data-field="requests"]`)?.textContent) > before,
    [busy, first], { timeout: LIMIT_MS, polling: 250 });
  const second = Number((await cell(busy, "requests").textContent()).trim());
  // The per-minute rate and latency come with requests.
  await page.waitForFunction(
    ([n]) => {
      const text = (f) => document.querySelector(`tr[data-daemon="${n}"] td[data-field="${f}"]`)?.textContent ?? "";
      return Number(text("requests_per_minute")) > 0 && text("p50").endsWith("ms") && text("p99").endsWith("ms");
    },
    [busy], { timeout: LIMIT_MS });
  const svg = await page.locator(`tr[data-daemon="${busy}"] td[data-field="chart"] svg`).count();
  if (svg !== 1) fail(`no SVG chart in ${busy}'s row`);
  const log = await page.locator(`tr[data-log="${busy}"] pre`).textContent();
  if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /.test(log)) fail(`${busy}'s stamped log lines are not on the page: ${log}`);
  // Let a sample or two reach the chart before the picture.
  await page.waitForFunction(
    ([n]) => document.querySelectorAll(`tr[data-daemon="${n}"] td[data-field="chart"] rect`).length >= 1,
    [busy], { timeout: LIMIT_MS });
  await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length) fail(`the page logged errors: ${errors.join("; ")}`);

  // The URL works once.
  const reuse = await context.request.get(url, { maxRedirects: 0, timeout: LIMIT_MS });
  if (reuse.status() !== 401) fail(`the one-time URL worked twice (${reuse.status()})`);

  console.log(JSON.stringify({ rows, requests: [first, second], screenshot }));
} catch (e) {
  console.error(`status page check failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
