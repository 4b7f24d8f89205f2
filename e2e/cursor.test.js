// One browser profile, two users. The 1.0.0 client keeps one lastPull per
// browser profile (localStorage "hyper-sync-last-pull"), not per user: when
// bob signs in where alice was, his first pull sends alice's cursor, and
// every row of bob's stamped before it would be skipped for good. The
// server's cookie hypersync_cursor ties a cursor to the user it was handed
// to, and a pull carrying another user's is answered from the epoch.
//
// The same scenario runs against a Caddy with `cursor_cookie off`, where
// bob must get none of those rows: the scenario can fail, and fails
// without the cookie. bob signs in two ways: the page reloaded, and in the
// page (the demo asks /whoami on "Sync now", and calls setUserId). In the
// page, the demo clears alice's rows from its tables when bob's first pull
// answer arrives, not before, and shows none of them meanwhile.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startCaddy, startPostgres, launchBrowser, unique, recordSync, waitUntil, serverPush, signIn } from "./harness.js";

const slow = "?syncInterval=600000";

const stores = [
  { name: "sqlite", database: async () => ({ url: undefined, stop() {} }) },
  { name: "postgres", database: async () => { const pg = await startPostgres(); return { url: pg.dsn, stop: pg.stop }; } },
];

for (const store of stores) {
  describe(`one browser profile, alice then bob, on ${store.name}`, { concurrency: false }, () => {
    let db, browser;
    const caddies = {};

    before(async () => {
      db = await store.database();
      caddies.on = await startCaddy({ databaseUrl: db.url });
      // (on PostgreSQL the two share the database: each run counts only
      // its own rows, and opens a profile of its own)
      caddies.off = await startCaddy({ databaseUrl: db.url, hypersync: ["cursor_cookie off"] });
      browser = await launchBrowser();
    });
    after(async () => {
      await browser?.close();
      await caddies.on?.stop();
      await caddies.off?.stop();
      await db?.stop();
    });

    for (const [cookie, how] of [["on", "reload"], ["on", "page"], ["off", "reload"], ["off", "page"]]) {
      const want = cookie === "on" ? "bob gets all 5 of his rows stamped before alice's cursor" : "bob gets none of them: the cookie is what brings them";
      const switching = how === "reload" ? "and the page reloads" : "in the page";
      test(`cursor_cookie ${cookie}, bob signs in ${switching}: ${want}`, { timeout: 90_000 }, async () => {
        const caddy = caddies[cookie];
        const context = await browser.newContext({ baseURL: caddy.baseURL });
        const log = [];
        context.on("console", (m) => log.push(`[console.${m.type()}] ${m.text()}`));
        context.on("weberror", (e) => log.push(`[pageerror] ${e.error().message}`));
        const requests = recordSync(context);
        try {
          await scenario(caddy, context, requests, { cookieOn: cookie === "on", inPage: how === "page" });
        } catch (err) {
          console.error(`\n--- ${store.name}, cursor_cookie ${cookie}: failed; browser console and /sync requests:`);
          console.error(log.join("\n"));
          console.error(requests.map((r) => `${r.method} ${r.path}${r.search} -> ${r.status ?? "…"}`).join("\n"));
          console.error(`--- Caddy log (last lines):\n${caddy.log.join("").split("\n").slice(-30).join("\n")}`);
          throw err;
        } finally {
          await context.close();
        }
      });
    }
  });
}

async function scenario(caddy, context, requests, { cookieOn, inPage }) {
  // bob writes five todos on another device, before alice does anything
  const tag = unique("bob's");
  const bobs = Array.from({ length: 5 }, (_, i) => `${tag} row ${i + 1}`);
  await serverPush(caddy.baseURL, "bob", bobs.map((title) => ({ todoId: title.replace(/\W/g, "-"), title })));
  const bobWrote = Date.now();

  // alice signs in, in this profile, writes a todo and syncs: the profile
  // stores her cursor, later than bob's five rows
  await signIn(context, "alice");
  const page = await context.newPage();
  await page.goto("/" + slow);
  await page.waitForFunction(() => Number(document.getElementById("status").dataset.syncs) >= 1);
  const mine = unique("alice's");
  await page.fill("#new-title", mine);
  await page.click("#add-todo button");
  await page.locator("li.todo .title", { hasText: mine }).first().waitFor();
  await syncNow(page);
  assert.equal(await page.locator("#status").getAttribute("data-pending"), "0", "alice's todo is still queued");
  const alicesCursor = await page.evaluate(() => localStorage.getItem("hyper-sync-last-pull"));
  assert.ok(new Date(alicesCursor) > new Date(bobWrote), `alice's cursor ${alicesCursor} is not later than bob's rows`);
  const cookies = await context.cookies();
  assert.equal(cookies.some((c) => c.name === "hypersync_cursor"), cookieOn, `cookies: ${JSON.stringify(cookies)}`);

  // bob writes again elsewhere, after alice's pull: his own cursor is now
  // past alice's, as for a user active on another device. (Otherwise the
  // server's other defence, a lastPull later than anything it handed this
  // user, would answer from the epoch, and the cookie would go untested.)
  const later = unique("bob's later");
  await serverPush(caddy.baseURL, "bob", [{ todoId: later.replace(/\W/g, "-"), title: later }]);

  // alice signs out, bob signs in: same profile, same localStorage, and
  // the demo takes the user the server names
  await signIn(context, "bob");
  const switched = Date.now();
  if (inPage) {
    // bob's pulls wait until the page was looked at: alice's rows are
    // still in its tables, and it shows none of them
    let release;
    const held = new Promise((resolve) => { release = resolve; });
    let holding = 0;
    const isPull = (url) => url.pathname === "/sync/pull/";
    await page.route(isPull, async (route) => { holding++; await held; await route.continue(); });
    await page.click("#sync-now");
    await page.locator("#user", { hasText: "bob" }).waitFor();
    await waitUntil(() => holding >= 1, 5000, "bob's first pull sent");
    const kept = await page.evaluate(() => globalThis.hypersyncDemo.db.todos.where("userId").equals("alice").count());
    assert.ok(kept >= 1, "alice's rows were cleared before bob's first pull answer arrived");
    assert.equal(await page.locator("li.todo").count(), 0, "the page shows rows while they are alice's");
    release(); // (the route stays, and lets every later pull through)
  } else {
    await page.reload();
    await page.locator("#user", { hasText: "bob" }).waitFor();
  }
  await page.locator("li.todo .title", { hasText: later }).first().waitFor({ timeout: 10_000 });
  await waitUntil(() => !requests.some((r) => r.open && r.path !== "/sync/events"), 5000, "bob's sync done");

  // bob's first pull sent alice's cursor: the case the cookie is for
  const first = requests.find((r) => r.path === "/sync/pull/" && r.at >= switched);
  assert.equal(new URLSearchParams(first.search).get("lastPull"), alicesCursor, "bob's first pull did not send alice's cursor");
  const titles = await page.locator("li.todo .title").allTextContents();
  const got = bobs.filter((t) => titles.includes(t));
  if (cookieOn) {
    assert.deepEqual(got, bobs, `bob shows ${got.length} of his 5 rows written before alice's cursor`);
  } else {
    assert.equal(got.length, 0, `without the cookie bob was expected to miss his 5 rows, and shows ${got.length}: the scenario no longer tests the cookie`);
  }
  assert.ok(!titles.includes(mine), "bob's page shows alice's todo");
  // the demo cleared alice's rows when bob's answer arrived
  const left = await page.evaluate(() => globalThis.hypersyncDemo.db.todos.where("userId").equals("alice").count());
  assert.equal(left, 0, "alice's rows are still in the page's tables");
  if (inPage) {
    // and live sync follows the demo's setUserId: bob's write elsewhere shows
    const poked = unique("bob's, live");
    await serverPush(caddy.baseURL, "bob", [{ todoId: poked.replace(/\W/g, "-"), title: poked }]);
    await page.locator("li.todo .title", { hasText: poked }).first().waitFor({ timeout: 5000 });
  }
}

// syncNow presses "Sync now" and waits for that sync to finish.
async function syncNow(page) {
  const before = Number(await page.locator("#status").getAttribute("data-syncs"));
  await page.click("#sync-now");
  await page.waitForFunction((n) => Number(document.getElementById("status").dataset.syncs) > n, before);
  const state = await page.locator("#status").getAttribute("data-state");
  if (state === "error") throw new Error(`sync failed: ${await page.locator("#status").textContent()}`);
}
