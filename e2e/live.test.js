// live.js in headless Chromium, on the demo and the real @jaaahn/hyper-sync
// 1.0.0 client: the guard every sync of the engine goes through, the floor
// between poke-driven syncs, one stream per browser without Web Locks, and
// what a restart of Caddy costs.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startCaddy, startPostgres, launchBrowser, Device, unique, recordSync, waitUntil, serverPush, basicAuth, signIn } from "./harness.js";

// Polling every ten minutes and window focus off: only live sync, the
// app's own "sync now" after a change, and the library's debounced sync
// after a change are left.
const slow = "?syncInterval=600000";

function suite(store, scenarios) {
  describe(`live sync on ${store.name}`, { concurrency: false }, () => {
    const env = { devices: [], contexts: [] };

    before(async () => {
      env.db = await store.database();
      env.caddy = await startCaddy({ databaseUrl: env.db.url });
      env.caddy2 = env.db.url ? await startCaddy({ databaseUrl: env.db.url }) : env.caddy;
      env.browser = await launchBrowser();
    });
    after(async () => {
      await env.browser?.close();
      await env.caddy?.stop();
      if (env.caddy2 !== env.caddy) await env.caddy2?.stop();
      await env.db?.stop();
    });

    env.open = async (instance, user, name) => {
      const d = await Device.open(env.browser, instance.baseURL, user, name, slow);
      env.devices.push(d);
      return d;
    };
    // context opens a browser profile of user, whose tabs share IndexedDB,
    // localStorage and the connection pool, as one browser's do.
    env.context = async (user, init) => {
      const context = await env.browser.newContext({ baseURL: env.caddy.baseURL, httpCredentials: { username: user, password: `${user}-pw` } });
      env.contexts.push(context);
      if (init) await context.addInitScript(init);
      const log = [];
      context.on("console", (m) => log.push(`[console.${m.type()}] ${m.text()}`));
      context.on("weberror", (e) => log.push(`[pageerror] ${e.error().message}`));
      context.log = log;
      return context;
    };

    // profile opens a browser profile signed in as user by a header, so
    // that another user can sign in to it later (signIn).
    env.profile = async (user) => {
      const context = await env.browser.newContext({ baseURL: env.caddy.baseURL });
      await signIn(context, user);
      env.contexts.push(context);
      const log = [];
      context.on("console", (m) => log.push(`[console.${m.type()}] ${m.text()}`));
      context.on("weberror", (e) => log.push(`[pageerror] ${e.error().message}`));
      context.log = log;
      return context;
    };

    for (const [name, fn] of Object.entries(scenarios)) {
      test(name, { timeout: 120_000 }, async () => {
        env.devices.length = 0;
        env.contexts.length = 0;
        try {
          await fn(env);
        } catch (err) {
          console.error(`\n--- ${store.name}: "${name}" failed; browser console and /sync requests:`);
          for (const d of env.devices) console.error(d.log.join("\n") || `[${d.name}] (nothing logged)`);
          for (const c of env.contexts) console.error(c.log.join("\n"));
          console.error(`--- Caddy log (last lines):\n${env.caddy.log.join("").split("\n").slice(-30).join("\n")}`);
          throw err;
        } finally {
          for (const d of env.devices) await d.close();
          for (const c of env.contexts) await c.close();
        }
      });
    }
  });
}

// tab opens the demo in a new tab of context, and waits for its first sync.
async function tab(context) {
  const page = await context.newPage();
  await page.goto("/" + slow);
  await page.waitForFunction(() => Number(document.getElementById("status").dataset.syncs) >= 1);
  return page;
}

// addTodo adds a todo through the page's form. The tab comes to the front
// first: Playwright's click waits for animation frames, which Chromium
// holds back in the other tabs (about 2 s a click).
async function addTodo(page, title) {
  await page.bringToFront();
  await page.fill("#new-title", title);
  await page.click("#add-todo button");
  await page.locator("li.todo .title", { hasText: title }).first().waitFor();
}

const shows = (page, title, timeout) => page.locator("li.todo .title", { hasText: title }).first().waitFor({ timeout });

// queued counts the changes of user still waiting in the browser's queue.
const queued = (page, user) => page.evaluate((user) =>
  globalThis.hypersyncDemo.sync.getChangesQueue().where("[pushed+userId]").equals([0, user]).count(), user);

const roles = (pages) => Promise.all(pages.map((p) => p.evaluate(() => document.getElementById("status").dataset.live ?? "")));
// (a closed tab's stream is closed, though Playwright reports no end for it)
const openStreams = (requests) => requests.filter((r) => r.path === "/sync/events" && r.open && !r.page.isClosed());

// One stream for the tabs of a browser: exactly one tab leads, and one
// request to …/events is open. Then it must stay so for two heartbeats of
// the election.
async function oneStream(pages, requests) {
  let seen = "";
  await waitUntil(async () => {
    const r = await roles(pages);
    seen = `roles ${JSON.stringify(r)}, ${openStreams(requests).length} streams open`;
    return r.filter((x) => x === "leader").length === 1 && r.filter((x) => x === "follower").length === pages.length - 1 &&
      openStreams(requests).length === 1;
  }, 10_000, "one leader among the tabs, and one stream open").catch((err) => { throw new Error(`${err.message} (${seen})`); });
  const leader = (await roles(pages)).indexOf("leader");
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal((await roles(pages)).indexOf("leader"), leader, "the leader changed with nobody leaving");
  assert.equal(openStreams(requests).length, 1, `${openStreams(requests).length} event streams open, want one`);
  return pages[leader];
}

const noLocks = () => { delete Navigator.prototype.locks; };

suite({ name: "sqlite", database: async () => ({ url: undefined, stop() {} }) }, {
  // The 1.0.0 client sends a refused change again at every sync, forever.
  // A push of it changes nothing, and pokes nobody; but while other writes
  // keep poking the device, each poke would sync, and push it again.
  "a refused change in the queue travels at most about once a second, however fast pokes come": async ({ open, caddy }) => {
    const key = unique("bobs").replace(/\W/g, "-");
    await serverPush(caddy.baseURL, "bob", [{ todoId: key, title: "bob's own" }]);
    const a = await open(caddy, "alice", "A");
    const requests = recordSync(a.page);
    const carrying = (from, to) => requests.filter((r) => r.path === "/sync/push" && r.at >= from && r.at < to);
    // through the real client: queued, pushed by its debounced sync two
    // seconds on, refused
    const queuedAt = Date.now();
    await a.page.evaluate((key) => globalThis.hypersyncDemo.todos.pushChange({ todoId: key, title: "taken by alice" }, "alice", new Date()), key);
    await waitUntil(() => carrying(queuedAt + 2000, Infinity).length >= 1, 10_000, "the library's debounced sync pushed the refused change");
    await waitUntil(async () => !requests.some((r) => r.open && r.path !== "/sync/events"), 5_000, "that sync done");
    assert.equal(await queued(a.page, "alice"), 1, "the refused change should stay queued");

    // quiet: nothing pokes this device, so nothing pushes
    let start = Date.now();
    await new Promise((r) => setTimeout(r, 6000));
    const quiet = carrying(start, Date.now()).length;

    // busy: another device of alice writes every 50 ms, and each write
    // pokes this one
    start = Date.now();
    let writes = 0;
    let last = "";
    while (Date.now() - start < 6000 && writes < 200) {
      last = unique("elsewhere");
      await serverPush(caddy.baseURL, "alice", [{ todoId: last.replace(/\W/g, "-"), title: last }]);
      writes++;
      await new Promise((r) => setTimeout(r, 50));
    }
    const end = Date.now();
    await shows(a.page, last, 3000); // it kept up: the last write shows
    const busy = carrying(start, end).length;
    console.log(`refused change: ${quiet} pushes in 6 s of quiet; ${busy} pushes in ${((end - start) / 1000).toFixed(1)} s of ${writes} writes elsewhere`);
    assert.ok(quiet <= 1, `${quiet} pushes in 6 s with nothing new: a refused change must not make the device sync`);
    assert.ok(busy <= 8, `${busy} pushes of the refused change in 6 s of pokes, want at most about one a second`);
  },

  // The library's debounced sync (bound when the engine was built), the
  // app's own "sync now" and the pokes, in two tabs of one browser that
  // share one change queue: each change goes out once.
  "each change is pushed once, with a second tab open": async ({ context }) => {
    const ctx = await context("alice");
    const requests = recordSync(ctx);
    const tabs = [await tab(ctx), await tab(ctx)];
    await waitUntil(() => openStreams(requests).length === 1, 10_000, "the tabs' stream open");
    const pushes = () => requests.filter((r) => r.path === "/sync/push");
    const settled = async (page, since) => {
      await waitUntil(async () => (await queued(page, "alice")) === 0, 10_000, "nothing left queued");
      // the library's own debounced sync, 2 s after the last change: it
      // has run once a pull of the page began after it
      if (since) {
        await waitUntil(() => requests.some((r) => r.page === page && r.path === "/sync/pull/" && r.at >= since + 2000), 10_000,
          "the library's debounced sync");
      }
      await waitUntil(() => !requests.some((r) => r.open && r.path !== "/sync/events"), 5_000, "every sync done");
    };
    const measure = (label, from, titles) => {
      const carried = pushes().slice(from).flatMap((p) => p.changes);
      const perChange = carried.length / titles.length;
      console.log(`${label}: ${pushes().length - from} pushes carried ${carried.length} changes for ${titles.length} (${perChange.toFixed(2)} a change)`);
      assert.equal(new Set(carried).size, titles.length, `${label}: pushes carried changes other than these`);
      // the target is at most 1.2 on average; with Web Locks one push at a
      // time in the browser makes a second push of a change impossible, so
      // it asks for exactly one
      assert.ok(perChange <= 1.2, `${label}: ${carried.length} changes carried for ${titles.length}: over the target of 1.2 a change`);
      assert.equal(carried.length, titles.length, `${label}: ${carried.length} changes carried for ${titles.length}: each should travel once`);
    };

    // as a user does: five todos through the page, one after the other
    let from = pushes().length;
    let titles = [];
    let lastChange = 0;
    for (let i = 0; i < 5; i++) {
      titles.push(unique(`once ${i + 1}`));
      lastChange = Date.now();
      await addTodo(tabs[0], titles.at(-1));
    }
    for (const t of titles) await shows(tabs[1], t, 5000);
    await settled(tabs[0], lastChange);
    measure("5 todos through the page, 2 tabs", from, titles);

    // every path at once: a change queued through the client (as the app
    // queues it), then the app's "sync now", the library's own debounced
    // sync (flushed rather than two seconds on) and the other tab's own
    // sync (as its interval would) all start together, and each would
    // read the queue and push it
    from = pushes().length;
    titles = [];
    for (let i = 0; i < 5; i++) {
      const title = unique(`together ${i + 1}`);
      titles.push(title);
      await tabs[0].evaluate((title) => globalThis.hypersyncDemo.todos.pushChange(
        { todoId: crypto.randomUUID(), title, listId: null, done: false, deleted: false }, "alice", new Date()), title);
      await Promise.all([
        tabs[0].evaluate(() => Promise.allSettled([globalThis.hypersyncDemo.live.syncNow(), globalThis.hypersyncDemo.sync.syncDebounced.flush()])),
        tabs[1].evaluate(() => globalThis.hypersyncDemo.sync.sync().catch(() => {})),
      ]);
    }
    await settled(tabs[0], 0); // its debounced sync was flushed
    measure("5 changes with every sync path at once, 2 tabs", from, titles);
  },

  // The 1.0.0 client's setUserId() only sets currentUserId, and an event
  // stream, once open, stays the user's it was opened for. live.js follows
  // the engine's user: the page that was alice's closes her stream and
  // opens bob's. Without that, bob's writes on another device would never
  // poke this page, and alice's would.
  "after setUserId(bob), the page that was alice's holds bob's stream: bob's pokes reach it, alice's do not": async ({ profile, open, caddy }) => {
    const ctx = await profile("alice");
    const requests = recordSync(ctx);
    const page = await tab(ctx);
    await waitUntil(() => openStreams(requests).length === 1, 10_000, "alice's stream open");
    const alices = openStreams(requests)[0];
    const pulls = (from, to = Infinity) => requests.filter((r) => r.path === "/sync/pull/" && r.at >= from && r.at < to);
    // pulled waits for a pull answer of the page that carries title
    const pulled = (title) => page.waitForResponse(async (r) =>
      new URL(r.url()).pathname === "/sync/pull/" && (await r.text()).includes(title), { timeout: 5000 });

    // alice's write elsewhere reaches her page
    const before = unique("alice elsewhere");
    let answer = pulled(before);
    await serverPush(caddy.baseURL, "alice", [{ todoId: before.replace(/\W/g, "-"), title: before }]);
    await answer;

    // bob signs in to the same page
    await signIn(ctx, "bob");
    const switched = Date.now();
    await page.evaluate(() => globalThis.hypersyncDemo.sync.setUserId("bob"));
    await waitUntil(() => !alices.open && openStreams(requests).length === 1 && openStreams(requests)[0].status === 200,
      5000, "alice's stream closed, and one stream open again");
    const bobs = openStreams(requests)[0];
    assert.ok(bobs.at >= switched, "the stream open is not one opened after the switch");
    assert.equal((await bobs.request.allHeaders()).authorization, basicAuth("bob"), "the new stream is not bob's");
    // the new stream knows no id: it syncs once when it opens
    await waitUntil(() => pulls(bobs.at).some((r) => r.status === 200), 5000, "bob's first sync on the page");
    await waitUntil(() => !requests.some((r) => r.open && r.path !== "/sync/events"), 5000, "that sync done");

    // bob's write on another device pokes the page
    const first = unique("bob elsewhere");
    answer = pulled(first);
    await serverPush(caddy.baseURL, "bob", [{ todoId: first.replace(/\W/g, "-"), title: first }]);
    await answer;
    await waitUntil(() => !requests.some((r) => r.open && r.path !== "/sync/events"), 5000, "that sync done");

    // alice's does not. Her other device shows it: her streams were poked.
    // Then bob writes again, and the page pulls that: had the page still
    // held a stream of alice's, her poke would have come before bob's, and
    // the page would have pulled for it too.
    const other = await open(caddy, "alice", "alice's other device");
    const alicePushed = Date.now();
    const after = unique("alice again");
    await serverPush(caddy.baseURL, "alice", [{ todoId: after.replace(/\W/g, "-"), title: after }]);
    await shows(other.page, after, 5000);
    const second = unique("bob again");
    answer = pulled(second);
    const bobPushed = Date.now();
    await serverPush(caddy.baseURL, "bob", [{ todoId: second.replace(/\W/g, "-"), title: second }]);
    await answer;
    assert.equal(pulls(alicePushed, bobPushed).length, 0, "the page pulled after alice's write: it still heard alice's pokes");
    assert.equal(openStreams(requests).length, 1, "more than one stream open");
  },

  // Over plain HTTP (other than localhost) there are no Web Locks. The tabs
  // elect over a BroadcastChannel: one stream, so that six tabs do not
  // take all six HTTP/1.1 connections the browser allows a site, and
  // pushes still go out.
  "without Web Locks, six tabs hold one stream, and a change from one reaches the others": async ({ context, caddy }) => {
    const ctx = await context("alice", noLocks);
    const requests = recordSync(ctx);
    const tabs = [];
    for (let i = 0; i < 6; i++) tabs.push(await tab(ctx));
    assert.equal(await tabs[0].evaluate(() => typeof navigator.locks), "undefined");
    const leader = await oneStream(tabs, requests);
    console.log(`six tabs without Web Locks: ${requests.filter((r) => r.path === "/sync/events").length} event stream requests in all`);

    const from = tabs.find((t) => t !== leader);
    const title = unique("six tabs");
    await addTodo(from, title);
    const start = Date.now(); // the change is made (and shows) in its own tab
    await Promise.all(tabs.map((t, i) => shows(t, title, 3000).catch(() => { throw new Error(`tab ${i + 1} did not show "${title}" within 3 s`); })));
    console.log(`six tabs without Web Locks: a change made in one showed in all six ${Date.now() - start} ms after`);
    await waitUntil(async () => (await queued(from, "alice")) === 0, 5000, "the push from a follower tab done");

    // the leader goes: another tab takes the stream over, and changes
    // still arrive, from another device too
    const rest = tabs.filter((t) => t !== leader);
    await leader.close();
    await oneStream(rest, requests);
    const later = unique("after the leader left");
    await serverPush(caddy.baseURL, "alice", [{ todoId: later.replace(/\W/g, "-"), title: later }]);
    for (const t of rest) await shows(t, later, 3000);
  },

  // Web Locks present, and the request refused (it may throw, or reject, as
  // in a sandboxed frame or with storage blocked): the channel elects.
  "a refused Web Locks request still opens one stream for two tabs": async ({ context, caddy }) => {
    for (const how of ["throws", "rejects"]) {
      const refusal = how === "throws" ? "() => { throw refuse(); }" : "() => Promise.reject(refuse())";
      const ctx = await context("alice", `(() => {
        const refuse = () => new DOMException("refused by the test", "SecurityError");
        LockManager.prototype.request = ${refusal};
      })()`);
      const requests = recordSync(ctx);
      const tabs = [await tab(ctx), await tab(ctx)];
      await oneStream(tabs, requests);
      const title = unique(`locks ${how}`);
      await serverPush(caddy.baseURL, "alice", [{ todoId: title.replace(/\W/g, "-"), title }]);
      for (const t of tabs) await shows(t, title, 3000);
      await ctx.close();
    }
  },
});

suite({ name: "postgres", database: async () => { const pg = await startPostgres(); return { url: pg.dsn, stop: pg.stop }; } }, {
  // A restart of the instance holding the streams: each EventSource comes
  // back by itself, after its stream's own retry:, sending the last id it
  // saw; the server pokes only a device whose user's cursor moved
  // meanwhile. A device that missed nothing does not pull.
  "after a restart of Caddy, only a device that missed something pulls": async ({ open, caddy, caddy2 }) => {
    const a = await open(caddy, "alice", "A");
    const b = await open(caddy, "bob", "B");
    // each user writes from another device (the other instance), and each
    // device shows it: its stream has an id, and it synced past it
    for (const [d, user] of [[a, "alice"], [b, "bob"]]) {
      const title = unique(`${user} before`);
      await serverPush(caddy2.baseURL, user, [{ todoId: title.replace(/\W/g, "-"), title }]);
      await shows(d.page, title, 3000);
    }
    const ra = recordSync(a.page), rb = recordSync(b.page);
    await waitUntil(() => ![...ra, ...rb].some((r) => r.open && r.path !== "/sync/events"), 5_000, "every sync done");
    const missed = unique("while Caddy was down");
    const down = Date.now();
    await caddy.restart(() => serverPush(caddy2.baseURL, "bob", [{ todoId: missed.replace(/\W/g, "-"), title: missed }]));
    const up = Date.now();
    // the first stream answered after the stop (attempts while Caddy was
    // down fail; one may come back before the harness saw Caddy up)
    const reopened = async (rs) => {
      const back = () => rs.find((r) => r.path === "/sync/events" && r.at >= down && r.status === 200);
      await waitUntil(back, 15_000, "the stream reopened");
      return back();
    };
    const [sa, sb] = [await reopened(ra), await reopened(rb)];
    await shows(b.page, missed, 3000);
    // A's stream is open, and gets no poke: nothing to pull. A sync on
    // reopening would start at once; give it a second and a half.
    await waitUntil(() => Date.now() - sa.at > 1500, 5000, "a second and a half");
    const pulls = (rs) => rs.filter((r) => r.path === "/sync/pull/" && r.at >= down).length;
    const ids = await Promise.all([sa, sb].map(async (s) => (await s.request.allHeaders())["last-event-id"] ?? ""));
    console.log(`restart: Caddy down ${up - down} ms; streams back ${sa.at - down} / ${sb.at - down} ms after the stop, Last-Event-ID ${ids.join(" / ")}; pulls since: A ${pulls(ra)}, B ${pulls(rb)}`);
    assert.ok(ids.every((id) => /^\d+$/.test(id)), `the reopened streams sent Last-Event-ID ${JSON.stringify(ids)}`);
    assert.equal(pulls(ra), 0, "A, which missed nothing, pulled after the restart");
    assert.ok(pulls(rb) >= 1, "B did not pull what it missed");
  },
});
