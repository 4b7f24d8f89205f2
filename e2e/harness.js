// Starts the real pieces for the browser suite: PostgreSQL (through the Go
// test helper), Caddy built from this repository with the demo's Caddyfile,
// and Debian's Chromium driven by playwright-core. Nothing here imitates
// the client: pages run the demo bundle with @jaaahn/hyper-sync 1.0.0.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, symlinkSync, mkdirSync, existsSync } from "node:fs";
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
// the suite runs on its own.
function goBinary(envVar, pkg, name) {
  if (process.env[envVar]) return process.env[envVar];
  const out = join(root, "e2e", ".bin", name);
  if (!existsSync(out)) {
    mkdirSync(dirname(out), { recursive: true });
    execFileSync("go", ["build", "-o", out, pkg], { cwd: root, stdio: "inherit" });
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
export async function startCaddy({ databaseUrl } = {}) {
  const bin = goBinary("CADDY_BIN", "./cmd/caddy", "caddy");
  const port = await freePort();
  const cwd = mkdtempSync(join(tmpdir(), "hypersync-e2e-"));
  symlinkSync(join(demoDir, "dist"), join(cwd, "dist"));
  const env = { ...process.env, HYPERSYNC_DEMO_ADDR: `http://127.0.0.1:${port}`, HYPERSYNC_DEMO_ADMIN: "off" };
  delete env.DATABASE_URL;
  if (databaseUrl) env.DATABASE_URL = databaseUrl;
  const proc = spawn(bin, ["run", "--config", join(demoDir, "Caddyfile")], { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
  const log = [];
  proc.stdout.on("data", (d) => log.push(String(d)));
  proc.stderr.on("data", (d) => log.push(String(d)));
  const baseURL = `http://127.0.0.1:${port}`;
  const auth = "Basic " + Buffer.from("alice:alice-pw").toString("base64");
  for (let i = 0; ; i++) {
    try {
      const r = await fetch(`${baseURL}/whoami`, { headers: { Authorization: auth } });
      if (r.ok) break;
    } catch {}
    if (proc.exitCode !== null || i > 150) throw new Error(`Caddy did not start:\n${log.join("")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    baseURL,
    log,
    dir: cwd,
    stop: () => new Promise((resolve) => {
      if (proc.exitCode !== null) return resolve();
      proc.once("exit", resolve);
      proc.kill("SIGTERM");
    }),
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
