// The hypersync todo demo: shared lists on the real @jaaahn/hyper-sync
// client, used exactly as that package's README shows. Local data lives in
// Dexie (IndexedDB); the client queues changes and syncs them through
// Caddy's /sync endpoint.
//
// Todos without a list are private (the Inbox). A list is shared with its
// members: creating one makes you its first member, and any member can add
// someone by user name, or remove a member. hypersync decides who sees
// what (share … via list_members in the Caddyfile); the app only shows it.
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
let userId = null;

// Last-write-wins on the device too: a pulled change replaces the local row
// only when it is at least as new. Payloads may be partial (and a tombstone
// of a list you left carries only its keys), so merge.
function upsertInto(table, key) {
  return async (payload, changeUserId, updatedAt) => {
    const existing = await table.get(key(payload));
    if (existing && new Date(existing.updatedAt) > new Date(updatedAt)) return;
    await table.put({ ...existing, ...payload, userId: changeUserId, updatedAt: new Date(updatedAt) });
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
  const updatedAt = new Date();
  const existing = await table.get(key);
  await table.put({ ...existing, ...fields, userId, updatedAt });
  scheduleRender();
  await shape.pushChange(fields, userId, updatedAt);
  renderStatus();
  // push now, rather than after the client's two-second debounce: with
  // live sync, the other devices see it within a second
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
// go in one push, memberships first, even offline.
async function addList(name) {
  const listId = newId();
  await change(lists, db.lists, listId, { listId, name, deleted: false });
  await setMember(listId, userId, false);
}

const $ = (id) => document.getElementById(id);
let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => { renderQueued = false; render(); });
}

async function render() {
  const ls = (await db.lists.toArray()).filter((l) => !l.deleted)
    .sort((a, b) => String(a.name).localeCompare(String(b.name)));
  if (selected && !ls.some((l) => l.listId === selected)) selected = null; // left, or deleted
  const inbox = listItem({ listId: null, name: "Inbox" });
  $("lists").replaceChildren(...ls.map(listItem));
  $("inbox").replaceChildren(inbox);
  const current = ls.find((l) => l.listId === selected);
  $("list-title").textContent = current ? current.name : "Inbox";

  const shown = selected
    ? await db.todos.where("listId").equals(selected).toArray()
    : (await db.todos.where("userId").equals(userId ?? "").toArray()).filter((t) => t.listId == null);
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
  syncs++;
  el.dataset.syncs = String(syncs);
  await render();
}

async function main() {
  // The user is whoever Caddy authenticated: the page asks the server.
  const who = await (await fetch("/whoami")).json();
  userId = who.userId;
  sync.setUserId(userId);
  $("user").textContent = `Signed in as ${userId}`;
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
  $("sync-now").addEventListener("click", syncNow);
  $("status").dataset.state = "idle";
  await render();
  await syncNow();
  // after the first sync: a poke then brings only what is new. The status
  // line says whether this tab holds the browser's event stream.
  liveSync = live(sync, {
    onSynced: () => { lastSync = new Date(); scheduleRender(); },
    onRole: (role) => { $("status").dataset.live = role; },
  });
}

// For the browser suite, and for trying things from the console: the
// engine, the shapes and live sync, as the app uses them.
globalThis.hypersyncDemo = { sync, todos, lists, members, get live() { return liveSync; } };

main();
