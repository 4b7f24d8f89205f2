// Starts the real pieces for the browser suite: PostgreSQL (through the Go
// test helper), Caddy built from this repository with the demo's Caddyfile,
// and Debian's Chromium driven by playwright-core. Nothing here imitates
// the client: pages run the demo bundle with @jaaahn/hyper-sync 1.0.0.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, symlinkSync, mkdirSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..");
export const outputDir = join(root, "e2e", "output");
const demoDir = join(root, "examples", "todo");
export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

// Go binaries are built once per run by scripts/test; build them here when
// the suite runs on its own, once per process (go build is quick when
// nothing changed, and a binary left from an older checkout is never used).
const built = new Set();
function goBinary(envVar, pkg, name) {
  if (process.env[envVar]) return process.env[envVar];
  const out = join(root, "e2e", ".bin", name);
  if (!built.has(out)) {
    mkdirSync(dirname(out), { recursive: true });
    execFileSync("go", ["build", "-o", out, pkg], { cwd: root, stdio: "inherit" });
    built.add(out);
  }
  return out;
}

export async function startPostgres() {
  if (process.env.HYPERSYNC_TEST_DSN) return { dsn: process.env.HYPERSYNC_TEST_DSN, stop() {} };
  const bin = goBinary("PGSERVER_BIN", "./internal/pgtest/pgserver", "pgserver");
  const proc = spawn(bin, [], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: proc.stdout });
  const dsn = await new Promise((resolve, reject) => {
    lines.once("line", resolve);
    proc.once("exit", (code) => reject(new Error(`pgserver exited with ${code}`)));
  });
  return {
    dsn,
    stop: () => new Promise((resolve) => { proc.once("exit", resolve); proc.stdin.end(); }),
  };
}

// startCaddy runs the demo exactly as a user would: the demo's Caddyfile,
// from a folder holding the built page, on a free loopback port. Without
// databaseUrl it uses the Caddyfile's default, an SQLite file in ./data.
// restart(during) stops it as a signal does, runs during() while it is
// down, and starts it again on the same port and folder. hypersync: lines
// added to the demo's hypersync block (e.g. "cursor_cookie off"), in a
// copy of its Caddyfile.
export async function startCaddy({ databaseUrl, hypersync = [] } = {}) {
  const bin = goBinary("CADDY_BIN", "./cmd/caddy", "caddy");
  const port = await freePort();
  const cwd = mkdtempSync(join(tmpdir(), "hypersync-e2e-"));
  symlinkSync(join(demoDir, "dist"), join(cwd, "dist"));
  let config = join(demoDir, "Caddyfile");
  if (hypersync.length) {
    const text = readFileSync(config, "utf8");
    const block = /^(\s*)hypersync \{\n/m;
    if (!block.test(text)) throw new Error("the demo's Caddyfile has no hypersync block");
    config = join(cwd, "Caddyfile");
    writeFileSync(config, text.replace(block, (line, indent) => line + hypersync.map((l) => `${indent}\t${l}\n`).join("")));
  }
  const env = { ...process.env, HYPERSYNC_DEMO_ADDR: `http://127.0.0.1:${port}`, HYPERSYNC_DEMO_ADMIN: "off" };
  delete env.DATABASE_URL;
  if (databaseUrl) env.DATABASE_URL = databaseUrl;
  const log = [];
  const baseURL = `http://127.0.0.1:${port}`;
  const auth = "Basic " + Buffer.from("alice:alice-pw").toString("base64");
  let proc;
  const start = async () => {
    proc = spawn(bin, ["run", "--config", config, "--adapter", "caddyfile"], { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    proc.stdout.on("data", (d) => log.push(String(d)));
    proc.stderr.on("data", (d) => log.push(String(d)));
    for (let i = 0; ; i++) {
      try {
        const r = await fetch(`${baseURL}/whoami`, { headers: { Authorization: auth } });
        if (r.ok) break;
      } catch {}
      if (proc.exitCode !== null || i > 150) throw new Error(`Caddy did not start:\n${log.join("")}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const stop = () => new Promise((resolve) => {
    if (proc.exitCode !== null) return resolve();
    proc.once("exit", resolve);
    proc.kill("SIGTERM");
  });
  await start();
  return {
    baseURL,
    log,
    dir: cwd,
    stop,
    async restart(during) {
      await stop();
      await during?.();
      await start();
    },
  };
}

// ensureChromium installs Debian's Chromium when it is missing. The suite
// never downloads a browser of its own.
function ensureChromium() {
  if (existsSync(CHROMIUM)) return;
  console.error(`${CHROMIUM} is missing: installing Debian's chromium package`);
  const sudo = process.getuid && process.getuid() === 0 ? [] : ["sudo"];
  const run = (args) => execFileSync(sudo.length ? "sudo" : args[0], sudo.length ? args : args.slice(1), { stdio: "inherit" });
  run(["apt-get", "update", "-qq"]);
  run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", "chromium"]);
}

export function launchBrowser() {
  ensureChromium();
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
  });
}

// A Device is one browser context (its own IndexedDB and localStorage, as a
// separate phone or laptop would have), signed in as one user.
export class Device {
  static async open(browser, baseURL, user, name = user, query = "") {
    const context = await browser.newContext({ baseURL, httpCredentials: { username: user, password: `${user}-pw` } });
    const page = await context.newPage();
    const d = new Device(name, context, page);
    page.on("console", (m) => d.log.push(`[${name} console.${m.type()}] ${m.text()}`));
    page.on("pageerror", (e) => d.log.push(`[${name} pageerror] ${e.message}`));
    page.on("requestfailed", (r) => {
      if (r.url().includes("/sync/")) d.log.push(`[${name}] ${r.method()} ${new URL(r.url()).pathname} failed: ${r.failure()?.errorText}`);
    });
    page.on("response", async (r) => {
      const url = new URL(r.url());
      if (!url.pathname.startsWith("/sync/")) return;
      const req = r.request();
      d.log.push(`[${name}] ${req.method()} ${url.pathname}${url.search} -> ${r.status()}`);
      if (url.pathname.endsWith("/push")) d.pushes.push(req.postDataJSON());
    });
    await page.goto("/" + query);
    await page.waitForFunction(() => Number(document.getElementById("status").dataset.syncs) >= 1);
    return d;
  }

  constructor(name, context, page) {
    this.name = name;
    this.context = context;
    this.page = page;
    this.log = [];
    this.pushes = [];
  }

  // syncNow presses "Sync now" and waits for that sync to finish.
  async syncNow() {
    const before = Number(await this.page.locator("#status").getAttribute("data-syncs"));
    await this.page.click("#sync-now");
    await this.page.waitForFunction((n) => Number(document.getElementById("status").dataset.syncs) > n, before);
    const state = await this.page.locator("#status").getAttribute("data-state");
    if (state === "error") throw new Error(`${this.name}: sync failed: ${await this.page.locator("#status").textContent()}`);
  }

  async addTodo(title) {
    await this.page.fill("#new-title", title);
    await this.page.click("#add-todo button");
    await this.page.locator("li.todo .title", { hasText: title }).first().waitFor();
  }

  todo(title) {
    return this.page.locator("li.todo", { has: this.page.locator(".title", { hasText: title }) });
  }

  async rename(title, newTitle) {
    await this.todo(title).locator(".title").dblclick();
    await this.page.fill("li.todo input.edit", newTitle);
    await this.page.press("li.todo input.edit", "Enter");
    await this.page.locator("li.todo .title", { hasText: newTitle }).first().waitFor();
  }

  async toggle(title) {
    await this.todo(title).locator("input[type=checkbox]").click();
  }

  async remove(title) {
    await this.todo(title).locator("button.delete").click();
    await this.todo(title).waitFor({ state: "detached" });
  }

  async titles() {
    return this.page.locator("li.todo .title").allTextContents();
  }

  // Lists: what the device shows, making one, opening one.
  async lists() {
    return this.page.locator("#lists li").allTextContents();
  }

  async addList(name) {
    await this.page.fill("#new-list", name);
    await this.page.click("#add-list button");
    await this.page.locator("#lists li", { hasText: name }).first().waitFor();
  }

  async openList(name) {
    await this.page.locator("#lists li", { hasText: name }).first().click();
    await this.page.locator("#list-title", { hasText: name }).waitFor();
  }

  async listId(name) {
    return this.page.locator("#lists li", { hasText: name }).first().getAttribute("data-list-id");
  }

  // Sharing the open list, and removing one of its members.
  async share(user) {
    await this.page.fill("#share-user", user);
    await this.page.click("#share button");
    await this.page.locator(`#members li[data-member-id="${user}"]`).waitFor();
  }

  async removeMember(user) {
    await this.page.locator(`#members li[data-member-id="${user}"] button.remove-member`).click();
    await this.page.locator(`#members li[data-member-id="${user}"]`).waitFor({ state: "detached" });
  }

  async pending() {
    return Number(await this.page.locator("#status").getAttribute("data-pending"));
  }

  async setOffline(offline) {
    await this.context.setOffline(offline);
  }

  async close() {
    await this.context.close();
  }
}

// recordSync records the /sync requests of a page or a whole browser
// context as they start: method, path, query, when, which page, the
// changeIds a push carries, the answer's status once it comes, and whether
// the request is still open (an event stream is, until it closes).
export function recordSync(target) {
  const requests = [];
  const byRequest = new Map();
  target.on("request", (r) => {
    const url = new URL(r.url());
    if (!url.pathname.startsWith("/sync/")) return;
    const e = { method: r.method(), path: url.pathname, search: url.search, at: Date.now(), page: r.frame().page(), open: true, request: r };
    if (url.pathname === "/sync/push") e.changes = (r.postDataJSON()?.changes ?? []).map((c) => c.changeId);
    requests.push(e);
    byRequest.set(r, e);
  });
  const ended = (r) => { const e = byRequest.get(r); if (e) e.open = false; };
  target.on("requestfinished", ended);
  target.on("requestfailed", ended);
  target.on("response", (r) => { const e = byRequest.get(r.request()); if (e) e.status = r.status(); });
  return requests;
}

// waitUntil polls cond every 50 ms until it is true, for at most ms.
export async function waitUntil(cond, ms, what) {
  const deadline = Date.now() + ms;
  for (let i = 0; ; i++) {
    if (await cond()) return;
    if (Date.now() > deadline || i > ms / 10) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// basicAuth is the Authorization header of user in the demo's basic_auth.
export const basicAuth = (user) => "Basic " + Buffer.from(`${user}:${user}-pw`).toString("base64");

// signIn makes every later request of context (page loads, fetches, event
// streams) carry user's credentials: the browser profile now belongs to
// user, as after signing out and in again. The context must not have been
// given httpCredentials, which would answer challenges as its first user.
export async function signIn(context, user) {
  await context.setExtraHTTPHeaders({ Authorization: basicAuth(user) });
}

// serverPush pushes changes to todos as another device of user would,
// from Node, and returns the answer.
export async function serverPush(baseURL, user, payloads) {
  const r = await fetch(`${baseURL}/sync/push`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: basicAuth(user) },
    body: JSON.stringify({ changes: payloads.map((payload) => ({ changeId: crypto.randomUUID(), shapeKey: "todos", pushed: 0, userId: user,
      updatedAt: new Date().toISOString(), payload: { done: false, deleted: false, ...payload } })) }),
  });
  if (r.status !== 201) throw new Error(`push as ${user}: ${r.status} ${await r.text()}`);
  return r.json();
}

// unique makes titles that no other scenario uses.
let seq = 0;
export const unique = (label) => `${label} ${Date.now().toString(36)}-${++seq}`;

export function ensureOutputDir() {
  mkdirSync(outputDir, { recursive: true });
  return outputDir;
}

// sqlExec runs one statement as another client of the demo's database
// would: psql for PostgreSQL, the sqlite3 shell for the demo's SQLite file.
export function sqlExec(caddy, databaseUrl, stmt) {
  if (databaseUrl) {
    execFileSync("psql", ["-v", "ON_ERROR_STOP=1", "-q", databaseUrl, "-c", stmt], { stdio: ["ignore", "ignore", "inherit"] });
  } else {
    execFileSync("sqlite3", ["-cmd", ".timeout 10000", join(caddy.dir, "data", "hypersync.db"), stmt], { stdio: ["ignore", "ignore", "inherit"] });
  }
}
