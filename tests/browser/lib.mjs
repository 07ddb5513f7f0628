// Shared by the browser drivers: headless Chromium from Debian's package,
// driven by playwright-core, failing on any console error or page error.
// Each driver prints one JSON object on its last stdout line; a failure
// prints {"error": ...} and exits 1. Progress lines before it are JSON too.
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

// Upper bound for anything a driver waits for, as in tests/common (WAIT).
export const WAIT_MS = 15000;

export function say(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

export function fail(message, extra = {}) {
  say({ error: message, ...extra });
  process.exit(1);
}

// A throw anywhere in a driver still ends in one JSON line.
process.on("unhandledRejection", e => fail(`driver: ${e && e.message ? e.message.split("\n")[0] : e}`));
process.on("uncaughtException", e => fail(`driver: ${e.message.split("\n")[0]}`));

// Opens `url` in a fresh headless browser; `errors` collects every console
// error, uncaught exception and failed request of the page.
export async function open(url, { ignoreHTTPSErrors = false } = {}) {
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      // Root in a container has no user namespace for the sandbox.
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    });
  } catch (e) {
    fail(`cannot start Chromium at ${CHROMIUM}: ${e.message.split("\n")[0]}`);
  }
  const context = await browser.newContext({ ignoreHTTPSErrors, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("console", m => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
  page.on("pageerror", e => errors.push(`page error: ${e.message}`));
  page.on("requestfailed", r => {
    // Requests the page or the driver closed on purpose are not failures.
    const why = r.failure() ? r.failure().errorText : "";
    if (!why.includes("ERR_ABORTED")) errors.push(`request failed: ${r.url()} ${why}`);
  });
  const response = await page.goto(url, { waitUntil: "load", timeout: WAIT_MS });
  if (!response || response.status() !== 200) {
    fail(`GET ${url}: ${response ? response.status() : "no response"}`);
  }
  return { browser, page, errors };
}

// Waits until `fn` (run in the page with `arg`) is truthy; fails with `what`.
export async function until(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 50 });
  } catch (e) {
    fail(`timed out waiting for ${what}`);
  }
}

export function text(page, selector) {
  return page.locator(selector).first().textContent({ timeout: WAIT_MS });
}

// Takes the screenshot, checks the console, closes the browser and prints
// the result line.
export async function finish({ browser, page, errors }, screenshot, result) {
  await page.screenshot({ path: screenshot, fullPage: true });
  // What closing the browser cancels is not the page's doing.
  const seen = errors.slice();
  await browser.close();
  if (seen.length) fail("the page logged errors", { errors: seen });
  say({ ok: true, screenshot, ...result });
}
