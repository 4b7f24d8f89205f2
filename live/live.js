// hypersync live: sync as soon as the server says something changed.
//
//   import { live } from "/sync/live.js";
//   live(sync); // sync: the SyncEngine configureSync() returned
//
// What it does, and why:
//
// - One guard for every sync. The 1.0.0 client's sync() calls this.push()
//   then this.pull(), and nothing stops two of them from running at once:
//   its own debounced sync (bound when the engine was built, so it never
//   passes through anything of ours), its interval, a poke, "Sync now".
//   Each would read the change queue and push it again, and the queue
//   lives in IndexedDB, shared by every tab of the browser. So live()
//   wraps the engine's own push and pull, through which every one of those
//   paths goes: one push and one pull at a time in a tab, one more after
//   it when asked meanwhile, and one push at a time in the whole browser
//   (a lock), so that the next push reads the queue after the last one
//   marked what the server accepted.
// - A floor between poke-driven syncs. The client keeps a refused change
//   in its queue and sends it again at every sync, forever. While changes
//   wait in the queue, poke-driven syncs run at most once a second; pokes
//   between coalesce into the next one, never dropped. With the queue
//   empty a poke's sync pushes nothing, and runs at once.
// - One stream per browser. One tab holds the event stream, elected with
//   Web Locks, or where they are missing or refused (plain-HTTP origins
//   other than localhost, older webviews) over a BroadcastChannel with a
//   heartbeat; the others hear its pokes on that channel. A browser thus
//   stays within HTTP/1.1's six connections per site, however many tabs.
// - Reconnects that do not make every device pull. EventSource reconnects
//   by itself after the retry: the server gave the stream (randomized per
//   stream) and sends the last id back; the server pokes at once only a
//   stream that missed something. So a reopened stream syncs only when a
//   poke of its own is still unsynced. A new EventSource (another tab took
//   over, or the server refused one) carries the newest id this page has
//   synced past as ?lastEventId=, and the server decides the same way; a
//   page that knows no id yet syncs once when its first stream opens.
// - The stream follows the engine's user. The 1.0.0 client's setUserId()
//   only sets currentUserId; live() watches it, and when it changes
//   (alice signs out, bob signs in, in the same page) closes alice's
//   stream, leaves her tabs' election, forgets her event ids (they are
//   her sync stamps, not bob's) and opens bob's stream: bob never gets
//   alice's pokes nor misses his own. The lock and the channel are named
//   for the user, so tabs elect one stream per user. With no user set the
//   engine does not sync, and no stream is open.
export function live(sync, options = {}) {
  // options: url (default: events beside this module), name (of the lock
  // and channel; the user is appended), floor (ms between poke-driven
  // syncs while changes wait in the queue, default 1000; 0: none),
  // onSynced() after each sync, onError(err), onClosed() when the server
  // refused the stream for good (204: live is off), onRole(role) with
  // "leader" when this tab holds the stream and "follower" when another
  // does.
  const url = options.url ?? new URL("events", import.meta.url).href;
  const base = options.name ?? "hypersync-live:" + url;
  const floor = options.floor ?? 1000;
  const engine = guard(sync);

  // told: the newest event id this page heard of; have: the newest id a
  // pull that began after hearing of it completed (the device has
  // everything up to it). Ids are the user's own sync stamps: they start
  // again from 0 for each user (gen counts the users this page followed,
  // so that a pull begun for one user moves nothing for the next).
  let told = 0;
  let have = 0;
  let gen = 0;
  const hear = (id) => { if (id > told) told = id; };
  const onPull = () => {
    const g = gen;
    const upTo = told;
    return () => { if (g === gen && upTo > have) have = upTo; };
  };
  engine.pulls.add(onPull);

  // run is the in-flight guard of whole syncs: one at a time, and one more
  // after it when asked again meanwhile. It resolves when the syncs it
  // joined are done, and rejects with the last one's error.
  let current = null;
  let again = false;
  function run() {
    if (current) {
      again = true;
      return current;
    }
    current = (async () => {
      let failed = null;
      try {
        do {
          again = false;
          failed = null;
          try {
            await sync.sync();
            options.onSynced?.();
          } catch (err) {
            failed = err;
            options.onError?.(err);
          }
        } while (again);
      } finally {
        current = null;
      }
      if (failed) throw failed;
    })();
    return current;
  }

  // The floor. A sync pushes only what waits in the queue, and only a push
  // pokes: a poke-driven sync can feed itself only while changes wait there
  // (a refused one, or an app that queues a change for each pulled row).
  // Then poke-driven syncs run at most once a floor; the pokes between
  // coalesce into the next one. With nothing waiting, a poke's sync is just
  // the pull it asks for, and it runs at once.
  let lastPokeSync = -Infinity;
  let deferred = null;
  async function pokeSync() {
    if (stopped) return;
    if (floor > 0 && await waiting()) {
      const wait = lastPokeSync + floor - performance.now();
      if (stopped) return;
      if (wait > 0) {
        deferred ??= setTimeout(() => { deferred = null; pokeSync(); }, wait);
        return;
      }
    }
    lastPokeSync = performance.now();
    run().catch(() => {});
  }
  async function waiting() {
    try {
      if (sync.currentUserId == null) return false;
      return (await sync.getChangesQueue().where("[pushed+userId]").equals([0, sync.currentUserId]).count()) > 0;
    } catch {
      return true; // cannot tell: keep the floor
    }
  }

  // The stream follows the engine's user. setUserId(bob) after alice (or
  // any write of sync.currentUserId) closes alice's stream, leaves her
  // election, forgets her event ids and opens bob's: bob gets none of
  // alice's pokes and misses none of his own. With no user set, the engine
  // does not sync, and no stream is held.
  let stopped = false;
  let user = null;
  let session = null;
  function follow(next) {
    if (stopped) return;
    next = next == null ? null : String(next);
    if (next === user) return;
    session?.stop();
    session = null;
    user = next;
    gen++;
    told = 0;
    have = 0;
    clearTimeout(deferred);
    deferred = null;
    lastPokeSync = -Infinity;
    if (user !== null) session = join(user);
  }
  engine.users.add(follow);

  // join holds the stream of one user, one per browser: one tab leads,
  // elected with Web Locks or over a BroadcastChannel, both named for the
  // user; the others hear its pokes on that channel.
  function join(user) {
    const name = base + ":" + user;
    let left = false;
    const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(name) : null;
    let election = null;
    if (channel) {
      channel.onmessage = ({ data }) => {
        if (left) return;
        if (data?.type === "poke") {
          hear(Number(data.id) || 0);
          pokeSync();
        } else {
          election?.message(data);
        }
      };
    }

    // The stream, while this tab holds it.
    let source = null;
    let reopen = null;
    let retryDelay = 2000;
    function open() {
      const first = have === 0;
      let target = url;
      if (!first) {
        const u = new URL(url, location.href);
        u.searchParams.set("lastEventId", String(have));
        target = u.href;
      }
      const es = new EventSource(target, { withCredentials: true });
      source = es;
      let opened = false;
      es.addEventListener("poke", (e) => {
        if (source !== es) return;
        const id = Number(e.lastEventId) || 0;
        hear(id);
        channel?.postMessage({ type: "poke", id });
        pokeSync();
      });
      es.addEventListener("open", () => {
        if (source !== es) return;
        retryDelay = 2000;
        // a page that knows no id syncs once when its first stream opens:
        // whatever came before it had no poke. After that the server's
        // catch-up decides, except for a poke heard and not synced yet
        const due = (!opened && first) || told > have;
        opened = true;
        if (!due) return;
        channel?.postMessage({ type: "poke", id: 0 });
        pokeSync();
      });
      es.addEventListener("error", () => {
        if (left || source !== es || es.readyState !== EventSource.CLOSED) return;
        // EventSource gives up on any answer but 200: a 204 means live sync
        // is off, and then this stops; a 429, a 503 or a proxy's 502 means
        // try again later, with backoff, on a new EventSource
        fetch(url, { method: "HEAD", credentials: "include" }).then((r) => r.status, () => 0).then((status) => {
          if (left || source !== es) return;
          if (status === 204) {
            source = null;
            options.onClosed?.();
            return;
          }
          const delay = retryDelay * (0.5 + Math.random());
          retryDelay = Math.min(retryDelay * 2, 60_000);
          reopen = setTimeout(() => { reopen = null; if (!left && source === es) open(); }, delay);
        });
      });
    }
    function close() {
      clearTimeout(reopen);
      reopen = null;
      source?.close();
      source = null;
    }

    const role = (r) => options.onRole?.(r);
    const lead = () => { if (!left) { role("leader"); open(); } };
    const watch = () => { close(); if (!left) role("follower"); };

    // Web Locks first: the lock is held for as long as the tab lives (or
    // follows this user), and the next tab in line takes over after it.
    // Where they are missing, or the request is refused (it may throw, or
    // reject), the channel elects.
    let releaseLock = null;
    const abort = typeof AbortController === "function" ? new AbortController() : null;
    function electByChannel() {
      if (left) return;
      if (!channel) return lead(); // no way to agree: every tab on its own
      election = channelElection(channel, lead, watch);
    }
    let entered = false;
    try {
      if (typeof navigator.locks?.request !== "function") throw new Error("no Web Locks");
      role("follower");
      navigator.locks.request(name, abort ? { signal: abort.signal } : {}, () => new Promise((release) => {
        entered = true;
        if (left) return release();
        releaseLock = release;
        lead();
      })).catch(() => { if (!entered) electByChannel(); });
    } catch {
      electByChannel();
    }

    return {
      stop() {
        left = true;
        close();
        election?.stop();
        channel?.close();
        if (!entered) abort?.abort(); // leave the lock's queue
        releaseLock?.();
      },
    };
  }

  follow(sync.currentUserId);

  return {
    // syncNow syncs behind the same guard, for an app that wants its own
    // change out at once instead of after the client's debounce, or a
    // "Sync now" button.
    syncNow: run,
    stop() {
      stopped = true;
      clearTimeout(deferred);
      session?.stop();
      session = null;
      engine.pulls.delete(onPull);
      engine.users.delete(follow);
    },
  };
}

// Election over a BroadcastChannel, for browsers without usable Web Locks.
// A leader announces itself every beat; a tab that hears none for three
// beats, or that starts, claims, and leads unless a leader answers or a
// claimant with a smaller id speaks within claimWait. Two leaders (a
// message lost, a frozen tab thawed) settle on the smaller id at the next
// beat. A leader that goes resigns, and the others claim at once.
const beat = 1000;
const claimWait = 300;

function channelElection(channel, lead, follow) {
  const me = randomId();
  let leader = false;
  let lastBeat = 0;
  let claim = null;
  let stopped = false;
  const post = (type) => { try { channel.postMessage({ type, from: me }); } catch {} };
  const cancelClaim = () => { clearTimeout(claim); claim = null; };
  function campaign() {
    if (stopped || leader || claim) return;
    post("claim");
    claim = setTimeout(() => {
      claim = null;
      if (stopped || leader) return;
      leader = true;
      post("lead");
      lead();
    }, claimWait);
  }
  function stepDown() {
    leader = false;
    lastBeat = performance.now();
    follow();
  }
  const tick = setInterval(() => {
    if (leader) post("lead");
    else if (performance.now() - lastBeat > 3 * beat) campaign();
  }, beat);
  const resign = () => {
    if (!leader) return;
    post("resign");
    stepDown();
  };
  const back = (e) => { if (e.type !== "pageshow" || e.persisted) campaign(); };
  addEventListener("pagehide", resign);
  addEventListener("pageshow", back);
  document.addEventListener?.("freeze", resign);
  document.addEventListener?.("resume", back);
  follow();
  campaign();
  return {
    message(m) {
      if (stopped || typeof m?.from !== "string" || m.from === me) return;
      switch (m.type) {
        case "lead":
          lastBeat = performance.now();
          cancelClaim();
          if (leader && m.from < me) stepDown();
          else if (leader) post("lead"); // the other steps down on hearing it
          break;
        case "claim":
          if (leader) post("lead");
          else if (claim && m.from < me) {
            cancelClaim();
            lastBeat = performance.now();
          } else if (!claim) lastBeat = performance.now();
          break;
        case "resign":
          lastBeat = 0;
          if (!leader) campaign();
          break;
      }
    },
    stop() {
      stopped = true;
      clearInterval(tick);
      cancelClaim();
      if (leader) post("resign");
      leader = false;
      removeEventListener("pagehide", resign);
      removeEventListener("pageshow", back);
      document.removeEventListener?.("freeze", resign);
      document.removeEventListener?.("resume", back);
    },
  };
}

const randomId = () => (crypto.randomUUID?.() ?? String(Math.random()).slice(2) + String(Date.now()));

// guard wraps a SyncEngine's push and pull once, and returns its state:
// pulls is a set of hooks called as a pull starts, each returning what to
// call when it completed; users is a set of listeners called with the new
// user each time the engine's user changes.
const guarded = Symbol.for("hypersync.live.guard");
function guard(sync) {
  if (sync[guarded]) return sync[guarded];
  const push = sync.push;
  const pull = sync.pull;
  const lock = browserLock("hypersync-live:push");
  const state = { pulls: new Set(), users: new Set() };
  sync.push = single(() => lock(() => push.call(sync)));
  sync.pull = single(async () => {
    const done = [...state.pulls].map((hook) => hook());
    await pull.call(sync);
    for (const d of done) d();
  });
  // The engine's user: setUserId(id) writes currentUserId, and so may an
  // app. Each write that changes it tells the listeners, at once.
  let userId = sync.currentUserId;
  Object.defineProperty(sync, "currentUserId", {
    configurable: true,
    enumerable: true,
    get: () => userId,
    set(next) {
      const before = userId;
      userId = next;
      if (next === before) return;
      for (const listener of [...state.users]) {
        try { listener(next); } catch (err) { console.error("hypersync live:", err); }
      }
    },
  });
  sync[guarded] = state;
  return state;
}

// single runs fn one at a time: a call while it runs gets one more run
// after it, shared with every other call meanwhile.
function single(fn) {
  let running = null;
  let next = null;
  const start = () => {
    running = (async () => {
      try {
        return await fn();
      } finally {
        running = null;
      }
    })();
    return running;
  };
  return function guardedCall() {
    if (!running) return start();
    next ??= running.then(() => {}, () => {}).then(() => {
      next = null;
      return running ?? start();
    });
    return next;
  };
}

// browserLock returns a function that runs fn holding a lock shared by the
// tabs of the browser: Web Locks where they work (a wait is bounded: a
// push that hangs in another tab does not hold this one forever), else
// notices on a BroadcastChannel, which shrink the window for two tabs to
// push at once to the time a message takes. Either way a second push of a
// change is harmless (last write wins, ties keep the stored row); the lock
// only saves it.
const lockWait = 10_000;
function browserLock(lockName) {
  let locks = typeof navigator.locks?.request === "function" ? navigator.locks : null;
  const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(lockName) : null;
  const me = randomId();
  const busy = new Map(); // other tabs' pushes: id → until when to believe it
  let wake = null;
  if (channel) {
    channel.onmessage = ({ data }) => {
      if (data?.type === "busy") busy.set(data.from, performance.now() + lockWait);
      else if (data?.type === "idle") busy.delete(data.from);
      wake?.();
    };
  }
  const settle = (ms) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    wake = () => { clearTimeout(t); wake = null; resolve(); };
  });
  async function othersDone() {
    const deadline = performance.now() + lockWait;
    for (let waited = false, i = 0; i < 1000; i++) {
      const now = performance.now();
      for (const [id, until] of busy) if (until <= now) busy.delete(id);
      if (busy.size === 0) {
        if (!waited) return;
        // tabs released by the same notice: a random pause, then look again
        waited = false;
        await settle(Math.random() * 30);
        continue;
      }
      if (now >= deadline) return;
      waited = true;
      await settle(Math.min(deadline - now, 1000));
    }
  }
  return async function withLock(fn) {
    if (locks) {
      let entered = false;
      const signal = typeof AbortSignal === "function" && typeof AbortSignal.timeout === "function" ? AbortSignal.timeout(lockWait) : undefined;
      try {
        return await locks.request(lockName, signal ? { signal } : {}, () => {
          entered = true;
          return fn();
        });
      } catch (err) {
        if (entered) throw err;
        if (err?.name === "AbortError" || err?.name === "TimeoutError") return fn();
        locks = null; // refused: notices from now on
      }
    }
    if (!channel) return fn();
    await othersDone();
    channel.postMessage({ type: "busy", from: me });
    try {
      return await fn();
    } finally {
      channel.postMessage({ type: "idle", from: me });
    }
  };
}
