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
  const url = options.url ?? new URL("events", import.meta.url).href;
  const name = options.name ?? "hypersync-live:" + url;
  let running = false;
  let again = false;
  async function run() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        try {
          await sync.sync();
        } catch (err) {
          options.onError?.(err);
        }
      } while (again);
    } finally {
      running = false;
    }
  }

  const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(name) : null;
  if (channel) channel.onmessage = () => run();

  let source = null;
  let stopped = false;
  let stopLock = null;
  function open() {
    let lost = false;
    source = new EventSource(url, { withCredentials: true });
    source.addEventListener("poke", () => {
      channel?.postMessage("poke");
      run();
    });
    source.addEventListener("open", () => {
      // after a reconnect, sync once: pokes may have gone by meanwhile
      if (lost) {
        channel?.postMessage("poke");
        run();
      }
      lost = false;
    });
    source.addEventListener("error", () => {
      lost = true;
      // a 204 (live is off) or another refusal: EventSource has given up
      if (source.readyState === EventSource.CLOSED && !stopped) options.onClosed?.();
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
    stop() {
      stopped = true;
      source?.close();
      channel?.close();
      stopLock?.();
    },
  };
}
