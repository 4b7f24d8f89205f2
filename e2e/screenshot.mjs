// Takes docs/demo.png, the picture of the demo in the README: alice's page
// with a shared list, its members, and a change the server refused.
//
//   (cd examples/todo && npm run build) && cd e2e && node screenshot.mjs [out.png]
//
// It starts the demo as the browser suite does (Caddy built from this
// repository, on a fresh SQLite file) and drives it as three users would.
// Not part of `npm test`.
import { join } from "node:path";
import { startCaddy, launchBrowser, Device, root } from "./harness.js";

const out = process.argv[2] ?? join(root, "docs", "demo.png");
const caddy = await startCaddy();
const browser = await launchBrowser();
try {
  const open = (user) => Device.open(browser, caddy.baseURL, user);
  const alice = await open("alice"), carol = await open("carol");

  // carol's book club, shared with alice
  await carol.addList("Book club");
  await carol.openList("Book club");
  await carol.share("alice");
  await carol.syncNow();

  // alice's list for the launch, shared with bob and carol
  await alice.addList("Launch week");
  await alice.openList("Launch week");
  for (const t of ["Write the README", "Ship hypersync", "Try it offline"]) await alice.addTodo(t);
  // (a live update may draw the list again under the click: click until
  // the todo shows done)
  const shipped = alice.page.locator("li.todo.done", { hasText: "Ship hypersync" });
  for (let i = 0; i < 5 && !(await shipped.count()); i++) {
    await alice.toggle("Ship hypersync");
    await shipped.waitFor({ timeout: 2000 }).catch(() => {});
  }
  await alice.share("bob");
  await alice.share("carol");
  await alice.syncNow();

  // alice, offline, adds to the book club, from which carol removes her
  // meanwhile: back online, her change is refused
  await alice.syncNow();
  await alice.openList("Book club");
  await alice.setOffline(true);
  await alice.addTodo("Pick the next book");
  await carol.openList("Book club");
  await carol.removeMember("alice");
  await carol.syncNow();
  await alice.setOffline(false);
  await alice.syncNow();
  await alice.page.locator("#refused").waitFor();

  await alice.openList("Launch week");
  await alice.page.setViewportSize({ width: 900, height: 600 });
  await alice.page.mouse.move(0, 0);
  await alice.page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  await caddy.stop();
}
