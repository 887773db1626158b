// Rendered frames (WADO-RS .../frames/{n}/rendered) for Tessera's viewers: one fetch per
// distinct request, an LRU cache of decoded-ready blob URLs, and low-priority prefetch.

import { request, seriesUrl } from "./dicomweb.js";

/** The URL of a rendered frame. `req`: {study, series, sop, frame (1-based), window, viewport:[w,h], quality}. */
export function renderedUrl(req) {
  const params = new URLSearchParams();
  if (req.window) params.set("window", req.window);
  if (req.viewport) params.set("viewport", `${req.viewport[0]},${req.viewport[1]}`);
  params.set("quality", String(req.quality ?? 90));
  return `${seriesUrl(req.study, req.series)}/instances/${encodeURIComponent(req.sop)}/frames/${req.frame}/rendered?${params}`;
}

export class FrameCache {
  constructor({ capacity = 160, accept = "image/jpeg", maxPrefetch = 2 } = {}) {
    this.capacity = capacity;
    this.accept = accept;
    this.maxPrefetch = maxPrefetch;
    this.ready = new Map(); // url -> blob URL (insertion order = LRU order)
    this.pending = new Map(); // url -> {promise, controller, users}
    this.prefetching = 0;
    this.queue = [];
    this.pinned = null; // the blob URL on screen is never revoked
  }

  /** Mark the blob URL currently on screen so eviction leaves it alone. */
  pin(objectUrl) {
    this.pinned = objectUrl;
  }

  /** A cached blob URL for this request, or null. */
  peek(req) {
    const url = renderedUrl(req);
    const hit = this.ready.get(url);
    if (hit) {
      this.ready.delete(url);
      this.ready.set(url, hit);
    }
    return hit || null;
  }

  /** Resolves to a blob URL of the rendered frame (throws ProblemError / AbortError). */
  load(req, { priority = "high" } = {}) {
    const url = renderedUrl(req);
    const hit = this.peek(req);
    if (hit) return Promise.resolve(hit);
    const existing = this.pending.get(url);
    if (existing) return existing.promise;
    const controller = new AbortController();
    const promise = (async () => {
      try {
        const response = await request(url, { accept: this.accept, signal: controller.signal, priority });
        const blob = await response.blob();
        const objectUrl = URL.createObjectURL(blob);
        this.ready.set(url, objectUrl);
        this.evict();
        return objectUrl;
      } finally {
        this.pending.delete(url);
      }
    })();
    this.pending.set(url, { promise, controller });
    return promise;
  }

  /** Abort in-flight requests that `keep(url)` does not want any more. */
  abortExcept(keep) {
    for (const [url, entry] of this.pending) if (!keep(url)) entry.controller.abort();
  }

  /** Queue low-priority loads (replacing the previous queue); at most maxPrefetch run at once. */
  prefetch(requests) {
    this.queue = requests.filter((req) => !this.peek(req));
    this.pump();
  }

  pump() {
    while (this.prefetching < this.maxPrefetch && this.queue.length) {
      const req = this.queue.shift();
      if (this.peek(req) || this.pending.has(renderedUrl(req))) continue;
      this.prefetching++;
      this.load(req, { priority: "low" })
        .catch(() => {})
        .finally(() => {
          this.prefetching--;
          this.pump();
        });
    }
  }

  evict() {
    for (const [url, objectUrl] of this.ready) {
      if (this.ready.size <= this.capacity) break;
      if (objectUrl === this.pinned) continue;
      this.ready.delete(url);
      URL.revokeObjectURL(objectUrl);
    }
  }
}
