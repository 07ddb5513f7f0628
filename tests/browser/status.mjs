// The admin status page in headless Chromium.
//
//   node status.mjs URL SCREENSHOT N1 N2 ...
//
// Opens URL (the admin listener's /) and waits until the page shows N1 open
// streams, prints {"seen": N1} and waits for N2, and so on: the Rust test
// changes the number of open streams after each "seen" line, and the page
// must follow without a reload. Then checks the charts are drawn, saves a
// screenshot and prints the result.
import { open, until, text, finish, say, fail } from "./lib.mjs";

const [url, screenshot, ...wanted] = process.argv.slice(2);
if (!url || !screenshot || wanted.length === 0) fail("usage: status.mjs URL SCREENSHOT N1 [N2 ...]");

const session = await open(url);
const { page } = session;
// A reload would lose this mark.
await page.evaluate(() => { window.__notReloaded = true; });
await until(page, "the EventSource to deliver a snapshot", () => document.getElementById("live").textContent === "live");

for (const n of wanted) {
  await until(page, `${n} open streams on the page`,
    n => document.getElementById("total-streams").textContent === n &&
         document.querySelector('#routes tr[data-route] td[data-k="streams_open"]')?.firstChild?.textContent === n,
    n);
  say({ seen: Number(n) });
}
const notReloaded = await page.evaluate(() => window.__notReloaded === true);
if (!notReloaded) fail("the page was reloaded");
const charts = await page.locator("#routes svg.spark polyline").count();
const routes = await page.locator("#routes tr[data-route]").count();
const upstreams = await page.locator("#upstreams tbody tr").count();
const listeners = await page.locator("#listeners tbody tr").count();
await finish(session, screenshot, {
  charts,
  routes,
  upstreams,
  listeners,
  streams: Number(await text(page, "#total-streams")),
  uptime: await text(page, "#uptime"),
});
