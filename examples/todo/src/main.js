// The hypersync todo demo: shared lists on the real @jaaahn/hyper-sync
// client, used exactly as that package's README shows. Local data lives in
// Dexie (IndexedDB); the client queues changes and syncs them through
// Caddy's /sync endpoint.
//
// Todos without a list are private (the Inbox). A list is shared with its
// members: creating one makes you its first member, and any member can add
// someone by user name, or remove a member. hypersync decides who sees
// what (share … via list_members in the Caddyfile); the app only shows it.
//
// The page follows the signed-in user: when another user signs in to the
// same browser, it calls setUserId (live sync follows), and clears its
// tables when that user's first pull answer arrives. Changes the server
// refused are shown, with the server's reason.
import Dexie from "dexie";
import { configureSync, useShape } from "@jaaahn/hyper-sync/web";
// Live sync: hypersync pokes this page when something it can see changed.
import { live } from "/sync/live.js";

const db = new Dexie("hypersync-todo-demo");
db.version(1).stores({
  todos: "&todoId, userId, updatedAt",
  lists: "&listId, userId, updatedAt",
});
db.version(2).stores({
  todos: "&todoId, userId, listId, updatedAt",
  lists: "&listId, userId, updatedAt",
  members: "&[listId+memberId], listId, memberId",
});

// ?syncInterval=<ms> sets the client's polling (the browser suite makes it
// ten minutes, so that only live sync can be what brings a change).
const params = new URLSearchParams(location.search);
const sync = configureSync({ serverEndpoint: "/sync", syncInterval: Number(params.get("syncInterval")) || 30_000,
  syncOnWindowFocus: !params.has("syncInterval") });
let liveSync = null;
let userId = null; // the engine's user, set by signIn

// Whose rows the local tables hold. IndexedDB, the client's change queue and
// its lastPull belong to the browser profile, not to a user: when bob signs
// in where alice was, the tables still hold alice's rows. They are cleared
// when bob's first pull answer arrives, not before: until then nothing shows
// (the page draws no one else's rows), and an answer to a pull begun for
// alice that lands after the switch is refused, so it cannot refill them.
// The server answers bob's first pull from the epoch, although it sends
// alice's lastPull (the cursor cookie), so the answer is all of bob's rows.
const holderKey = "hypersync-todo-demo-holder";
let holder = localStorage.getItem(holderKey);
let pullingFor = null; // the user the pull in flight began for
let adopting = null;
function answered(user) {
  if (user !== sync.currentUserId) throw new Error(`a pull answer for ${user} arrived after ${sync.currentUserId} signed in: not applied`);
  if (holder === user) return;
  if (holder === null) return keep(user); // a profile from before this version: its rows are the user's
  adopting ??= db.transaction("rw", db.todos, db.lists, db.members, () =>
    Promise.all([db.todos.clear(), db.lists.clear(), db.members.clear()]))
    .then(() => keep(user)).finally(() => { adopting = null; });
  return adopting;
}
function keep(user) {
  holder = user;
  localStorage.setItem(holderKey, user);
  scheduleRender();
}
// Every pull of the engine (the app's, the client's own timers, live
// sync's) goes through here: an answer without a row has arrived when the
// pull is done.
const clientPull = sync.pull;
sync.pull = async function pull() {
  const user = (pullingFor = this.currentUserId);
  await clientPull.call(this);
  if (user === this.currentUserId) await answered(user);
};

// Last-write-wins on the device too: a pulled change replaces the local row
// only when it is at least as new. Payloads may be partial (and a tombstone
// of a list you left carries only its keys), so merge.
function upsertInto(table, key) {
  return async (payload, changeUserId, updatedAt) => {
    await answered(pullingFor);
    // read and write in one transaction: a local edit of the row meanwhile
    // must not be overwritten with what was read before it
    await db.transaction("rw", table, async () => {
      const existing = await table.get(key(payload));
      if (existing && new Date(existing.updatedAt) > new Date(updatedAt)) return;
      await table.put({ ...existing, ...payload, userId: changeUserId, updatedAt: new Date(updatedAt) });
    });
    scheduleRender();
  };
}

const todos = useShape({ shapeKey: "todos", syncEngine: sync, upsertRemoteChangeFn: upsertInto(db.todos, (p) => p.todoId) });
const lists = useShape({ shapeKey: "lists", syncEngine: sync, upsertRemoteChangeFn: upsertInto(db.lists, (p) => p.listId) });
const members = useShape({ shapeKey: "list_members", syncEngine: sync,
  upsertRemoteChangeFn: upsertInto(db.members, (p) => [p.listId, p.memberId]) });

// A local edit: write it locally at once, then queue the (possibly partial)
// change for the server.
async function change(shape, table, key, fields) {
  await queue(shape, table, key, fields);
  pushNow();
}
async function queue(shape, table, key, fields) {
  const updatedAt = new Date();
  await db.transaction("rw", table, async () => {
    const existing = await table.get(key);
    await table.put({ ...existing, ...fields, userId, updatedAt });
  });
  scheduleRender();
  await shape.pushChange(fields, userId, updatedAt);
}
// push now, rather than after the client's two-second debounce: with live
// sync, the other devices see it within a second
function pushNow() {
  renderStatus();
  liveSync?.syncNow().then(renderStatus, renderStatus);
}

// Ids are random UUIDs: a list id must be unguessable, or a stranger could
// found the list first. crypto.randomUUID exists only in secure contexts;
// on a plain-HTTP address (a phone on the LAN) the id is built from
// getRandomValues, which exists everywhere.
function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; // version 4
  b[8] = (b[8] & 0x3f) | 0x80; // variant 1
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
let selected = null; // the list shown; null is the Inbox
const addTodo = (title) => { const todoId = newId(); return change(todos, db.todos, todoId, { todoId, listId: selected, title, done: false, deleted: false }); };
// Toggling sends only the field that changed: hypersync applies partial payloads.
const setDone = (todoId, done) => change(todos, db.todos, todoId, { todoId, done });
const rename = (todoId, title) => change(todos, db.todos, todoId, { todoId, title });
// Deleting is a tombstone: sync never hard-deletes.
const remove = (todoId) => change(todos, db.todos, todoId, { todoId, deleted: true });
const setMember = (listId, memberId, deleted) =>
  change(members, db.members, [listId, memberId], { listId, memberId, deleted });
// A new list: its row, and you as its first member, which founds it. Both
// are queued before the push, so that they go in one push (hypersync
// applies its memberships first), even offline: the list's row pushed
// alone would be refused, its scope having no member yet.
async function addList(name) {
  const listId = newId();
  await queue(lists, db.lists, listId, { listId, name, deleted: false });
  await queue(members, db.members, [listId, userId], { listId, memberId: userId, deleted: false });
  pushNow();
}

const $ = (id) => document.getElementById(id);
let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => { renderQueued = false; render(); });
}

async function render() {
  // rows of another user, until this user's first answer clears them (a
  // profile that never held anyone's holds this user's)
  const mine = userId != null && (holder === userId || holder === null);
  const ls = (mine ? await db.lists.toArray() : []).filter((l) => !l.deleted)
    .sort((a, b) => String(a.name).localeCompare(String(b.name)));
  if (selected && !ls.some((l) => l.listId === selected)) selected = null; // left, or deleted
  const inbox = listItem({ listId: null, name: "Inbox" });
  $("lists").replaceChildren(...ls.map(listItem));
  $("inbox").replaceChildren(inbox);
  const current = ls.find((l) => l.listId === selected);
  $("list-title").textContent = current ? current.name : "Inbox";

  const shown = !mine ? []
    : selected ? await db.todos.where("listId").equals(selected).toArray()
    : (await db.todos.where("userId").equals(userId).toArray()).filter((t) => t.listId == null);
  const rows = shown.filter((t) => !t.deleted).sort((a, b) => String(a.title).localeCompare(String(b.title)));
  // A title being edited: a live update must not throw away what the user
  // is typing. The list is drawn again when the edit ends.
  if (!$("todos").querySelector("input.edit")) $("todos").replaceChildren(...rows.map(todoItem));

  $("sharing").hidden = !selected;
  if (selected) {
    const ms = (await db.members.where("listId").equals(selected).toArray()).filter((m) => !m.deleted)
      .sort((a, b) => a.memberId.localeCompare(b.memberId));
    $("members").replaceChildren(...ms.map(memberItem));
  }
  renderStatus();
}

function listItem(l) {
  const li = document.createElement("li");
  li.className = l.listId === selected ? "list selected" : "list";
  if (l.listId) li.dataset.listId = l.listId;
  li.textContent = l.name;
  li.addEventListener("click", () => { selected = l.listId; scheduleRender(); });
  return li;
}

function memberItem(m) {
  const li = document.createElement("li");
  li.className = "member";
  li.dataset.memberId = m.memberId;
  const name = document.createElement("span");
  name.textContent = m.memberId === userId ? `${m.memberId} (you)` : m.memberId;
  const del = document.createElement("button");
  del.className = "ghost remove-member";
  del.type = "button";
  del.textContent = "✕";
  del.setAttribute("aria-label", `remove ${m.memberId}`);
  del.addEventListener("click", () => setMember(m.listId, m.memberId, true));
  li.append(name, del);
  return li;
}

function todoItem(t) {
  const li = document.createElement("li");
  li.className = t.done ? "todo done" : "todo";
  li.dataset.todoId = t.todoId;
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = !!t.done;
  box.setAttribute("aria-label", "done");
  box.addEventListener("change", () => setDone(t.todoId, box.checked));
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = t.title;
  title.title = "Double-click to edit";
  title.addEventListener("dblclick", () => {
    const input = document.createElement("input");
    input.className = "edit";
    input.value = t.title;
    const done = () => {
      const v = input.value.trim();
      input.replaceWith(title); // the edit is over: the list may be drawn again
      if (v && v !== t.title) rename(t.todoId, v); else scheduleRender();
    };
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") input.blur(); if (e.key === "Escape") { input.value = t.title; input.blur(); } });
    input.addEventListener("blur", done, { once: true });
    title.replaceWith(input);
    input.focus();
  });
  const del = document.createElement("button");
  del.className = "ghost delete";
  del.type = "button";
  del.textContent = "✕";
  del.setAttribute("aria-label", "delete");
  del.addEventListener("click", () => remove(t.todoId));
  li.append(box, title, del);
  return li;
}

let lastSync = null;
let syncs = 0;
let syncError = null;
async function renderStatus() {
  const pending = userId == null ? 0
    : await sync.getChangesQueue().where("[pushed+userId]").equals([0, userId]).count();
  const el = $("status");
  const when = lastSync ? lastSync.toLocaleTimeString() : "never";
  el.textContent = syncError ? `Sync failed: ${syncError} · ${pending} pending`
    : `Last sync: ${when} · ${pending} pending`;
  el.dataset.pending = String(pending);
}

// "Sync now" runs the client's own sync: push, then pull.
async function syncNow() {
  const el = $("status");
  el.dataset.state = "syncing";
  try {
    // behind live sync's guard once it runs: the client's sync() must not
    // run twice at once
    await (liveSync ? liveSync.syncNow() : sync.sync());
    lastSync = new Date();
    syncError = null;
    el.dataset.state = "idle";
  } catch (e) {
    syncError = e?.response ? `HTTP ${e.response.status}` : String(e?.message ?? e);
    el.dataset.state = "error";
  }
  await loadRefused();
  recheckRefused();
  syncs++;
  el.dataset.syncs = String(syncs);
  await render();
}

// Refused changes. The server keeps, per user, a record of the changes it
// refused (GET /sync/rejections, newest first). The 1.0.0 client keeps a
// refused change in its queue and sends it again at every sync, and says
// nothing: the page shows which changes were refused, and why. It asks
// after each sync; the box is hidden when there are none.
let refused = [];
let refusedFor = null; // the user refused belongs to
let loadingRefused = null;
let reloadRefused = false;
function loadRefused() {
  if (loadingRefused) {
    reloadRefused = true;
    return loadingRefused;
  }
  loadingRefused = (async () => {
    try {
      for (let i = 0; i < 3; i++) { // one more after it when asked meanwhile
        reloadRefused = false;
        const user = userId;
        try {
          const r = await fetch("/sync/rejections", { cache: "no-store" });
          // the browser's credentials may have changed meanwhile
          if (r.ok && user === userId) {
            refused = (await r.json()).rejections ?? [];
            refusedFor = user;
          }
        } catch {} // offline: keep what is shown
        if (!reloadRefused) break;
      }
    } finally {
      loadingRefused = null;
    }
    await renderRefused();
  })();
  return loadingRefused;
}

// The server writes its record just after a push's answer, so a change
// refused by the push may not be in it yet when the page asks right after
// the sync. A change still queued after a sync was refused (or was queued
// since): while one of those is not in the record, ask again, three times
// at most, further apart each time.
let rechecking = false;
async function recheckRefused() {
  if (rechecking) return;
  rechecking = true;
  try {
    for (const wait of [250, 1000, 3000]) {
      if (!navigator.onLine || userId == null) return;
      const queued = await sync.getChangesQueue().where("[pushed+userId]").equals([0, userId]).primaryKeys();
      if (queued.every((id) => refused.some((r) => r.changeId === id))) return;
      await new Promise((resolve) => setTimeout(resolve, wait));
      await loadRefused();
    }
  } finally {
    rechecking = false;
  }
}

async function renderRefused() {
  // A change refused once and accepted when sent again (the queue sends it
  // at every sync) is marked pushed in this device's queue: not shown.
  const queued = await sync.getChangesQueue().bulkGet(refused.map((r) => r.changeId)).catch(() => []);
  const shown = refusedFor !== userId ? [] : refused.filter((r, i) => queued[i]?.pushed !== 1);
  $("refused-title").textContent = shown.length === 1 ? "1 change was refused" : `${shown.length} changes were refused`;
  $("refused-list").replaceChildren(...await Promise.all(shown.map(refusedItem)));
  $("refused").hidden = shown.length === 0;
}

// A refused change: what it changed (the shape, its key, and the row's name
// when this device has the row), and the server's reason.
async function refusedItem(r) {
  const li = document.createElement("li");
  li.className = "refusal";
  li.dataset.changeId = r.changeId;
  li.dataset.error = r.error;
  const key = r.key && typeof r.key === "object" ? r.key : {};
  const what = document.createElement("span");
  what.className = "what";
  const name = await rowName(r.shapeKey, key);
  what.textContent = `${r.shapeKey} ${name ? `“${name}” ` : ""}(${Object.entries(key).map(([f, v]) => `${f} ${v}`).join(", ")})`;
  const why = document.createElement("span");
  why.className = "why";
  why.textContent = `${r.error}: ${r.message}` + (r.times > 1 ? ` · sent ${r.times} times` : "");
  li.append(what, why);
  return li;
}

async function rowName(shapeKey, key) {
  if (holder !== userId && holder !== null) return null; // the tables hold someone else's rows
  try {
    if (shapeKey === "todos" && key.todoId != null) return (await db.todos.get(String(key.todoId)))?.title ?? null;
    if (shapeKey === "lists" && key.listId != null) return (await db.lists.get(String(key.listId)))?.name ?? null;
    if (shapeKey === "list_members" && key.listId != null) {
      const list = await db.lists.get(String(key.listId));
      return list ? `${key.memberId} in ${list.name}` : null;
    }
  } catch {} // a key of another type than the table's
  return null;
}

// The user is whoever Caddy authenticated: the page asks the server when it
// starts, when it comes back to the front, and on "Sync now". With
// basic_auth, another user signs in to this browser by its credentials
// changing: the page then follows.
async function checkUser() {
  const r = await fetch("/whoami", { cache: "no-store" });
  if (!r.ok) throw new Error(`/whoami: HTTP ${r.status}`);
  const { userId: who } = await r.json();
  if (who) signIn(who);
}

// signIn makes user the engine's user: setUserId, which live sync follows
// (it closes the last user's event stream and opens this one's). The local
// tables are cleared when this user's first pull answer arrives (answered).
function signIn(user) {
  if (user === userId) return;
  userId = user;
  sync.setUserId(user);
  selected = null;
  $("user").textContent = `Signed in as ${user}`;
  renderRefused();
  scheduleRender();
}

async function main() {
  await checkUser();
  addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") checkUser().catch(() => {});
  });
  $("add-todo").addEventListener("submit", (e) => {
    e.preventDefault();
    const title = $("new-title").value.trim();
    if (title) addTodo(title);
    $("new-title").value = "";
  });
  $("add-list").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("new-list").value.trim();
    if (name) addList(name);
    $("new-list").value = "";
  });
  $("share").addEventListener("submit", (e) => {
    e.preventDefault();
    const who = $("share-user").value.trim();
    if (who && selected) setMember(selected, who, false);
    $("share-user").value = "";
  });
  $("sync-now").addEventListener("click", () => checkUser().catch(() => {}).then(syncNow));
  $("status").dataset.state = "idle";
  await render();
  await syncNow();
  // after the first sync: a poke then brings only what is new. The status
  // line says whether this tab holds the browser's event stream.
  liveSync = live(sync, {
    onSynced: () => { lastSync = new Date(); scheduleRender(); loadRefused().then(recheckRefused); },
    onRole: (role) => { $("status").dataset.live = role; },
  });
}

// For the browser suite, and for trying things from the console: the
// engine, the local tables, the shapes, live sync and the user check, as
// the app uses them.
globalThis.hypersyncDemo = { sync, db, todos, lists, members, checkUser, get live() { return liveSync; } };

main();
