// The demo app in headless Chromium, on the real @jaaahn/hyper-sync 1.0.0
// client, against Caddy + hypersync on SQLite and on PostgreSQL.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startCaddy, startPostgres, launchBrowser, Device, unique, ensureOutputDir, sqlExec } from "./harness.js";

const stores = [
  { name: "sqlite", database: async () => ({ url: undefined, stop() {} }) },
  { name: "postgres", database: async () => { const pg = await startPostgres(); return { url: pg.dsn, stop: pg.stop }; } },
];

for (const store of stores) {
  describe(`demo on ${store.name}`, { concurrency: false }, () => {
    let db, caddy, caddy2, browser;
    const devices = [];

    before(async () => {
      db = await store.database();
      caddy = await startCaddy({ databaseUrl: db.url });
      // a second instance on the same database, for live sync across them
      caddy2 = db.url ? await startCaddy({ databaseUrl: db.url }) : caddy;
      browser = await launchBrowser();
    });
    after(async () => {
      await browser?.close();
      await caddy?.stop();
      if (caddy2 !== caddy) await caddy2?.stop();
      await db?.stop();
    });

    const open = async (user, name) => {
      const d = await Device.open(browser, caddy.baseURL, user, name);
      devices.push(d);
      return d;
    };

    // scenario runs one test with fresh devices, and on failure prints what
    // the browsers logged and every /sync request with its status.
    const scenario = (name, fn) => test(name, { timeout: 90_000 }, async () => {
      devices.length = 0;
      try {
        await fn();
      } catch (err) {
        console.error(`\n--- ${store.name}: "${name}" failed; browser console and /sync requests:`);
        for (const d of devices) console.error(d.log.join("\n") || `[${d.name}] (nothing logged)`);
        console.error(`--- Caddy log (last lines):\n${caddy.log.join("").split("\n").slice(-30).join("\n")}`);
        throw err;
      } finally {
        for (const d of devices) await d.close();
      }
    });

    scenario("a row written straight into the database (psql, the sqlite3 shell) shows on the owner's device", async () => {
      const a = await open("alice", "A");
      await a.syncNow();
      const title = unique("from a backend job");
      const id = unique("job").replace(/\W/g, "-");
      sqlExec(caddy, db.url, `INSERT INTO todos ("todoId", title, done, deleted, "userId") VALUES ('${id}', '${title}', false, false, 'alice')`);
      await a.syncNow();
      assert.ok((await a.titles()).includes(title), `A does not show "${title}", written directly in the database`);
      const fixed = unique("fixed by an admin");
      sqlExec(caddy, db.url, `UPDATE todos SET title = '${fixed}' WHERE "todoId" = '${id}'`);
      await a.syncNow();
      const titles = await a.titles();
      assert.ok(titles.includes(fixed) && !titles.includes(title), `A shows ${JSON.stringify(titles)}, want the admin's fix`);
    });

    // Live: polling every ten minutes, window focus off, nobody presses
    // "Sync now" on the receiving side: only a poke can bring the change.
    const slow = "?syncInterval=600000";
    const openOn = async (instance, user, name) => {
      const d = await Device.open(browser, instance.baseURL, user, name, slow);
      devices.push(d);
      return d;
    };
    const waitFor = async (d, title, ms) => {
      const start = Date.now();
      await d.page.locator("li.todo .title", { hasText: title }).first().waitFor({ timeout: ms });
      return Date.now() - start;
    };

    scenario(`live: a todo added on one device shows on the other within 1 s${store.name === "postgres" ? ", across two Caddy instances" : ""}`, async () => {
      const a = await openOn(caddy, "alice", "A"), b = await openOn(caddy2, "alice", "B");
      await new Promise((r) => setTimeout(r, 300)); // B's stream is open
      const title = unique("live");
      const start = Date.now();
      await a.addTodo(title);
      await waitFor(b, title, 1000);
      console.log(`live (${store.name}): ${Date.now() - start} ms from adding on A to showing on B`);
    });

    scenario("live: two tabs of one browser share one stream, and both show a change within 1 s", async () => {
      const context = await browser.newContext({ baseURL: caddy.baseURL, httpCredentials: { username: "alice", password: "alice-pw" } });
      try {
        let streams = 0;
        const tabs = [];
        for (let i = 0; i < 2; i++) {
          const page = await context.newPage();
          page.on("request", (r) => { if (new URL(r.url()).pathname === "/sync/events") streams++; });
          await page.goto("/" + slow);
          await page.waitForFunction(() => Number(document.getElementById("status").dataset.syncs) >= 1);
          tabs.push(page);
        }
        await new Promise((r) => setTimeout(r, 500));
        assert.equal(streams, 1, `the two tabs opened ${streams} event streams, want one (Web Locks)`);
        const other = await openOn(caddy, "alice", "phone");
        const title = unique("two tabs");
        await other.addTodo(title);
        for (const [i, page] of tabs.entries()) {
          await page.locator("li.todo .title", { hasText: title }).first().waitFor({ timeout: 1000 })
            .catch(() => { throw new Error(`tab ${i + 1} did not show "${title}" within 1 s`); });
        }
      } finally {
        await context.close();
      }
    });

    scenario("live: a member's edit reaches another member", async () => {
      const alice = await openOn(caddy, "alice", "alice"), bob = await openOn(caddy2, "bob", "bob");
      const list = unique("Live list");
      const item = unique("bread");
      await alice.addList(list);
      await alice.openList(list);
      await alice.addTodo(item);
      await alice.share("bob");
      await bob.page.locator("#lists li", { hasText: list }).first().waitFor({ timeout: 3000 });
      await bob.openList(list);
      await waitFor(bob, item, 2000);
      const edited = unique("rye bread");
      const start = Date.now();
      await bob.rename(item, edited);
      await waitFor(alice, edited, 1000);
      console.log(`live (${store.name}): a member's edit reached another in ${Date.now() - start} ms`);
    });

    scenario("a shared list: invite, edit, a row from psql, remove; carol sees nothing", async () => {
      const alice = await open("alice", "alice"), bob = await open("bob", "bob"), carol = await open("carol", "carol");
      const list = unique("Family groceries");
      const milk = unique("milk");
      await alice.addList(list);
      await alice.openList(list);
      await alice.addTodo(milk);
      await alice.share("bob");
      await alice.syncNow();
      assert.equal(await alice.pending(), 0, "alice's list, membership and todo are still queued");

      await bob.syncNow();
      assert.ok((await bob.lists()).includes(list), `bob does not show the list: ${await bob.lists()}`);
      await bob.openList(list);
      assert.ok((await bob.titles()).includes(milk), `bob does not show the list's todo: ${await bob.titles()}`);

      await carol.syncNow();
      assert.ok(!(await carol.lists()).includes(list), "carol, never invited, shows the list");

      // bob edits; alice sees it
      const oat = unique("oat milk");
      await bob.rename(milk, oat);
      await bob.syncNow();
      await alice.syncNow();
      assert.ok((await alice.titles()).includes(oat), `alice does not show bob's edit: ${await alice.titles()}`);

      // a row inserted with psql (or the sqlite3 shell) into the list
      const listId = await alice.listId(list);
      const fromJob = unique("from a backend job");
      const id = unique("job").replace(/\W/g, "-");
      sqlExec(caddy, db.url, `INSERT INTO todos ("todoId", "listId", title, done, deleted, "userId") VALUES ('${id}', '${listId}', '${fromJob}', false, false, 'backend')`);
      await alice.syncNow();
      await bob.syncNow();
      for (const d of [alice, bob]) {
        assert.ok((await d.titles()).includes(fromJob), `${d.name} does not show the row written with SQL: ${await d.titles()}`);
      }

      // alice removes bob: the list and its todos leave bob's browser
      await alice.removeMember("bob");
      await alice.syncNow();
      await bob.syncNow();
      assert.ok(!(await bob.lists()).includes(list), `bob still shows the list: ${await bob.lists()}`);
      const left = await bob.titles();
      assert.ok(!left.includes(oat) && !left.includes(fromJob), `bob still shows the list's todos: ${left}`);

      // and carol, at no point
      await carol.syncNow();
      assert.ok(!(await carol.lists()).includes(list), "carol shows the list");
      const pulled = await carol.page.evaluate(async () => (await fetch("/sync/pull/")).json());
      assert.ok(!JSON.stringify(pulled).includes(listId), `carol pulled something of the list: ${JSON.stringify(pulled).slice(0, 300)}`);
    });

    // A change the server refuses stays in the 1.0.0 client's queue, sent
    // again at every sync, and the client says nothing. The demo asks the
    // server's record (…/rejections) after each sync and shows it.
    scenario("a refused change shows, with its reason: a todo added offline to a list its author was removed from", async () => {
      const carol = await open("carol", "carol"), alice = await open("alice", "alice");
      assert.equal(await carol.page.locator("#refused").isHidden(), true, "the refused-changes box shows with nothing refused");
      const list = unique("Book club");
      await carol.addList(list);
      await carol.openList(list);
      await carol.share("alice");
      await carol.syncNow();
      await alice.syncNow();
      await alice.openList(list);

      // carol, offline, adds a todo to the list; meanwhile alice removes her
      await carol.setOffline(true);
      const late = unique("chapter 3 notes");
      await carol.addTodo(late);
      await alice.removeMember("carol");
      await alice.syncNow();
      await carol.setOffline(false);
      await carol.syncNow();

      const box = carol.page.locator("#refused");
      await box.waitFor({ timeout: 10_000 });
      assert.equal(await carol.page.locator("#refused-title").textContent(), "1 change was refused");
      const item = carol.page.locator("#refused li.refusal");
      assert.equal(await item.count(), 1);
      assert.equal(await item.getAttribute("data-error"), "forbidden");
      const text = await item.textContent();
      const key = await carol.page.evaluate((late) => globalThis.hypersyncDemo.db.todos.filter((t) => t.title === late).first(), late);
      for (const want of ["todos", late, `todoId ${key.todoId}`, "forbidden: ", "not a member"]) {
        assert.ok(text.includes(want), `the refused change reads ${JSON.stringify(text)}, without ${JSON.stringify(want)}`);
      }
      assert.equal(await carol.pending(), 1, "the refused change should stay queued (the 1.0.0 client keeps it)");
      assert.ok(!(await carol.lists()).includes(list), "carol still shows the list she was removed from");
      // it is carol's alone
      await alice.syncNow();
      assert.equal(await alice.page.locator("#refused").isHidden(), true, "alice is shown carol's refused change");
    });

    scenario("two devices of one user: what A writes, B receives", async () => {
      const a = await open("alice", "A"), b = await open("alice", "B");
      const title = unique("buy milk");
      await a.addTodo(title);
      await a.syncNow();
      assert.equal(await a.pending(), 0, "A's change is still queued after a sync");
      await b.syncNow();
      assert.ok((await b.titles()).includes(title), `B does not show "${title}"`);
    });

    scenario("last write wins: the later edit wins everywhere", async () => {
      const a = await open("alice", "A"), b = await open("alice", "B");
      const title = unique("shared");
      await a.addTodo(title);
      await a.syncNow();
      await b.syncNow();
      await a.rename(title, `${title} by A`);
      await new Promise((r) => setTimeout(r, 20));
      await b.rename(title, `${title} by B`);
      for (let i = 0; i < 2; i++) {
        await a.syncNow();
        await b.syncNow();
      }
      for (const d of [a, b]) {
        const titles = await d.titles();
        assert.ok(titles.includes(`${title} by B`), `${d.name} shows ${JSON.stringify(titles.filter((t) => t.startsWith(title)))}`);
        assert.ok(!titles.includes(`${title} by A`), `${d.name} still shows A's older edit`);
      }
    });

    scenario("offline queue: writes made offline arrive after reconnecting", async () => {
      const a = await open("alice", "A"), b = await open("alice", "B");
      const title = unique("written offline");
      await a.setOffline(true);
      await a.addTodo(title);
      await a.syncNow();
      assert.equal(await a.pending(), 1, "the offline change should wait in A's queue");
      await b.syncNow();
      assert.ok(!(await b.titles()).includes(title), "B received a change A never sent");
      await a.setOffline(false);
      await a.syncNow();
      assert.equal(await a.pending(), 0);
      await b.syncNow();
      assert.ok((await b.titles()).includes(title), `B does not show "${title}"`);
    });

    scenario("late upload: an old updatedAt pushed after B pulled still reaches B", async () => {
      const a = await open("alice", "A"), b = await open("alice", "B");
      const late = unique("old offline edit");
      await a.setOffline(true);
      await a.addTodo(late); // updatedAt is now, and B is about to pull past it
      await new Promise((r) => setTimeout(r, 50));
      await b.addTodo(unique("B meanwhile"));
      await b.syncNow(); // B's lastPull moves past A's updatedAt
      await a.setOffline(false);
      await a.syncNow();
      await b.syncNow();
      assert.ok((await b.titles()).includes(late), `B missed the late upload "${late}"`);
    });

    scenario("user isolation: bob sees nothing of alice's, and cannot write it", async () => {
      const a = await open("alice", "A");
      const title = unique("alice only");
      await a.addTodo(title);
      await a.syncNow();
      const key = await a.todo(title).getAttribute("data-todo-id");
      const bob = await open("bob", "bob");
      const bobTitles = await bob.titles();
      assert.ok(!bobTitles.some((t) => t.startsWith("alice only")), `bob sees alice's rows: ${bobTitles}`);

      const crafted = (userId) => bob.page.evaluate(async ({ key, userId }) => {
        const r = await fetch("/sync/push", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ changes: [{ changeId: crypto.randomUUID(), shapeKey: "todos", pushed: 0, userId,
            updatedAt: new Date(Date.now() + 60_000).toISOString(), payload: { todoId: key, title: "pwned by bob", done: true, deleted: false } }] }),
        });
        return { status: r.status, body: await r.json() };
      }, { key, userId });
      for (const userId of ["alice", "bob"]) {
        const res = await crafted(userId);
        assert.equal(res.status, 201);
        assert.deepEqual(res.body.acceptedChanges, [], `bob's push as ${userId} was accepted`);
        assert.equal(res.body.rejectedChanges[0]?.error, "user-mismatch");
      }
      const b = await open("alice", "A2");
      const titles = await b.titles();
      assert.ok(titles.includes(title) && !titles.includes("pwned by bob"), `alice's row changed: ${titles}`);
    });

    scenario("tombstones propagate", async () => {
      const a = await open("alice", "A"), b = await open("alice", "B");
      const title = unique("doomed");
      await a.addTodo(title);
      await a.syncNow();
      await b.syncNow();
      assert.ok((await b.titles()).includes(title));
      const key = await a.todo(title).getAttribute("data-todo-id");
      await a.remove(title);
      await a.syncNow();
      await b.syncNow();
      assert.ok(!(await b.titles()).includes(title), "B still shows the deleted todo");
      // The server kept the row, marked deleted: sync never hard-deletes.
      const pulled = await a.page.evaluate(async () => (await fetch("/sync/pull/")).json());
      const row = pulled.changes.find((c) => c.payload.todoId === key);
      assert.equal(row?.payload.deleted, true, "the server row is not a tombstone");
    });

    scenario("unauthenticated /sync/pull gets 401 with a Basic challenge", async () => {
      const r = await fetch(`${caddy.baseURL}/sync/pull/`);
      assert.equal(r.status, 401);
      assert.match(r.headers.get("www-authenticate") ?? "", /^Basic/);
    });

    scenario("partial payload: {todoId, done} flips done and keeps the title", async () => {
      const a = await open("alice", "A"), b = await open("alice", "B");
      const title = unique("partial");
      await a.addTodo(title);
      await a.syncNow();
      await b.syncNow();
      await a.toggle(title);
      await a.syncNow();
      const key = await a.todo(title).getAttribute("data-todo-id");
      const sent = a.pushes.flatMap((p) => p.changes).filter((c) => c.payload.todoId === key);
      assert.ok(sent.some((c) => Object.keys(c.payload).sort().join() === "done,todoId" && c.payload.done === true),
        `the toggle was not sent as a partial payload: ${JSON.stringify(sent)}`);
      await b.syncNow();
      assert.equal(await b.todo(title).locator("input[type=checkbox]").isChecked(), true, "B does not show it done");
      assert.ok((await b.titles()).includes(title), "the title was lost");
    });

    scenario("a second shape (lists) syncs alongside todos", async () => {
      const a = await open("alice", "A"), b = await open("alice", "B");
      const name = unique("Groceries");
      await a.page.fill("#new-list", name);
      await a.page.click("#add-list button");
      await a.syncNow();
      await b.syncNow();
      assert.ok((await b.page.locator("#lists li").allTextContents()).includes(name), "B does not show the list");
    });

    scenario("a screenshot of the demo after a sync", async () => {
      // bob, whom the other scenarios leave with no todos of his own
      const a = await open("bob", "bob");
      await a.page.setViewportSize({ width: 900, height: 600 });
      for (const t of ["Write the README", "Ship hypersync", "Try it offline"]) await a.addTodo(t);
      await a.toggle("Ship hypersync");
      await a.page.fill("#new-list", "Launch week");
      await a.page.click("#add-list button");
      await a.syncNow();
      const file = join(ensureOutputDir(), `demo-${store.name}.png`);
      await a.page.screenshot({ path: file, fullPage: true });
      console.log(`screenshot: ${file}`);
      assert.equal(await a.pending(), 0);
    });
  });
}
