// hypersync live: sync as soon as the server says something changed.
//
//   import { live } from "/sync/live.js";
//   live(sync); // sync: the SyncEngine configureSync() returned
//
// One tab per browser holds the event stream (elected with Web Locks);
// the others hear its pokes on a BroadcastChannel, which keeps a browser
// within HTTP/1.1's six connections per site. Without Web Locks, every tab
// opens its own stream. A poke runs sync.sync() behind an in-flight guard:
// one sync at a time, and one more if a poke came during it. It never calls
// syncDebounced(), which waits two seconds.
export function live(sync, options = {}) {
  // options: url (default: events beside this module), name (of the lock
  // and channel), onSynced() after each sync, onError(err), onClosed()
  // when the server refused the stream for good (204: live is off).
  const url = options.url ?? new URL("events", import.meta.url).href;
  const name = options.name ?? "hypersync-live:" + url;
  // The in-flight guard: one sync at a time, and one more after it when
  // asked again meanwhile. run() resolves when the syncs it joined are
  // done, and rejects with the last one's error.
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
  const poke = () => run().catch(() => {});

  const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(name) : null;
  if (channel) channel.onmessage = poke;

  let source = null;
  let stopped = false;
  let stopLock = null;
  let retryDelay = 2000;
  function open() {
    // a new stream syncs once when it opens: whatever came while no stream
    // was open (before it, or between a tab's stream and the next's) has
    // had no poke
    let lost = true;
    source = new EventSource(url, { withCredentials: true });
    source.addEventListener("poke", () => {
      channel?.postMessage("poke");
      poke();
    });
    source.addEventListener("open", () => {
      retryDelay = 2000;
      if (lost) {
        channel?.postMessage("poke");
        poke();
      }
      lost = false;
    });
    source.addEventListener("error", () => {
      lost = true;
      if (source.readyState !== EventSource.CLOSED || stopped) return;
      // EventSource gives up on any answer but 200: a 204 means live sync
      // is off, and then this stops; a 429, a 503 or a proxy's 502 means
      // try again later, with backoff
      fetch(url, { method: "HEAD", credentials: "include" }).then((r) => r.status, () => 0).then((status) => {
        if (stopped) return;
        if (status === 204) {
          options.onClosed?.();
          return;
        }
        const delay = retryDelay * (0.5 + Math.random());
        retryDelay = Math.min(retryDelay * 2, 60_000);
        setTimeout(() => { if (!stopped) open(); }, delay);
      });
    });
    return source;
  }

  if (navigator.locks?.request) {
    // held for as long as this tab lives; the next tab takes over after
    navigator.locks.request(name, () => new Promise((release) => {
      if (stopped) return release();
      open();
      stopLock = release;
    }));
  } else {
    open();
  }
  return {
    // syncNow syncs behind the same guard, for an app that wants its own
    // change out at once instead of after the client's debounce, or a
    // "Sync now" button: the client's sync() must not run twice at once.
    syncNow: run,
    stop() {
      stopped = true;
      source?.close();
      channel?.close();
      stopLock?.();
    },
  };
}
