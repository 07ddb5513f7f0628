// The demo page in headless Chromium.
//
//   node demo.mjs URL SCREENSHOT MANY
//
// Opens URL (the demo's page through the proxy) and checks each box at
// work: the ticking EventSource's id changes as events arrive, the idle
// stream shows a heartbeat comment, a POST reply streams in token by token,
// and of 50 EventSources opened at once at least MANY become live. Saves a
// screenshot and prints what it saw.
import { open, until, text, finish, fail } from "./lib.mjs";

const [url, screenshot, many] = process.argv.slice(2);
if (!url || !screenshot || !many) fail("usage: demo.mjs URL SCREENSHOT MANY");

const session = await open(url, { ignoreHTTPSErrors: true });
const { page } = session;
const protocol = await text(page, "#protocol");

await until(page, "a first tick", () => Number(document.getElementById("tick-count").textContent) >= 1);
const firstId = await text(page, "#tick-id");
await until(page, "the tick id to change", id => document.getElementById("tick-id").textContent !== id, firstId);
const laterId = await text(page, "#tick-id");
if (!(Number(laterId) > Number(firstId))) fail(`tick ids went ${firstId} -> ${laterId}`);

await until(page, "a heartbeat on the idle stream", () => Number(document.getElementById("heartbeat-count").textContent) >= 1);
const heartbeat = await text(page, "#heartbeat-log li");

await page.click("#send");
await until(page, "the first tokens of the reply", () => document.getElementById("reply").textContent.length > 0);
const partial = await text(page, "#reply");
await until(page, "the whole reply", () => document.getElementById("chat-state").textContent.endsWith("done"));
const reply = await text(page, "#reply");
if (!(reply.length > partial.length)) fail(`the reply did not grow: ${JSON.stringify(partial)} -> ${JSON.stringify(reply)}`);

await page.click("#open-many");
await until(page, `${many} of 50 EventSources live`,
  n => Number(document.getElementById("many-live").textContent) >= Number(n), many);
const live = Number(await text(page, "#many-live"));
await until(page, "ticks on the 50", () => Number(document.getElementById("many-events").textContent) >= 1);

await finish(session, screenshot, {
  protocol,
  first_id: Number(firstId),
  later_id: Number(laterId),
  heartbeat,
  reply,
  partial_reply: partial,
  many_live: live,
  ticks: Number(await text(page, "#tick-count")),
});
