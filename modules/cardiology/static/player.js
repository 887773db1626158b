// Loops for the cardiology viewer: timing JSON, frames streamed in one request, the ECG,
// and the clock that keeps a grid of loops in lock-step.
//
// Frames arrive as one multipart/related response whose parts carry Content-Length, so
// frame 1 is on screen as soon as its bytes arrive and the rest buffer behind it. Each
// frame is drawn at the time the DICOM says (FrameTime or FrameTimeVector), not at a
// rounded rate; a grid shares one clock.

import { ProblemError, problemFrom } from "/static/js/dicomweb.js";

const CRLF2 = [13, 10, 13, 10];

function indexOf(bytes, pattern, from) {
  outer: for (let i = from; i <= bytes.length - pattern.length; i++) {
    for (let j = 0; j < pattern.length; j++) if (bytes[i + j] !== pattern[j]) continue outer;
    return i;
  }
  return -1;
}

/**
 * Read a multipart/related body part by part; calls onPart(index, Uint8Array, contentType).
 * Parts are cut at offsets (no copying of the rest per part), so a large chunk holding
 * hundreds of frames costs one pass and frame 1 is handed on before the rest is parsed.
 */
async function readParts(response, onPart) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = new Uint8Array(0);
  let offset = 0;
  let index = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (value) {
      const joined = new Uint8Array(buffer.length - offset + value.length);
      joined.set(buffer.subarray(offset));
      joined.set(value, buffer.length - offset);
      buffer = joined;
      offset = 0;
    }
    for (;;) {
      const headEnd = indexOf(buffer, CRLF2, offset);
      if (headEnd < 0) break;
      const head = decoder.decode(buffer.subarray(offset, headEnd));
      const match = /content-length:\s*(\d+)/i.exec(head);
      if (!match) {
        const type = /content-type:\s*([^\r\n]+)/i.exec(head);
        if (type && type[1].startsWith("text/plain")) {
          throw new Error(decoder.decode(buffer.subarray(headEnd + 4)).split("\r\n")[0] || "the frame stream ended early");
        }
        if (/--[^\r\n]*--/.test(head) || done) return index;
        break;
      }
      const length = Number(match[1]);
      const start = headEnd + 4;
      if (buffer.length < start + length + 2) break;
      const contentType = (/content-type:\s*([^\r\n]+)/i.exec(head) || [])[1] || "";
      await onPart(index++, buffer.subarray(start, start + length), contentType);
      offset = start + length + 2;
    }
    if (done) return index;
  }
}

/**
 * The URL of a loop: a SOP Instance UID, or `group/{SeriesInstanceUID}/{n}` for single-frame
 * images of one acquisition; each path segment is encoded, the slashes stay.
 */
export function loopPath(id) {
  return `/cardiology/loops/${String(id).split("/").map(encodeURIComponent).join("/")}`;
}

export class Loop {
  constructor(info) {
    this.info = info;
    this.frames = new Array(info.number_of_frames).fill(null);
    this.loaded = 0;
    this.ecg = null;
    this.error = null;
    this.times = info.frame_times_ms;
    this.onFrame = () => {};
  }

  /**
   * Timing JSON and the frame stream are asked for at once: one round trip to frame 1.
   * `early` holds what boot.js and the study index already brought, when they did: `info`
   * (the loop JSON), `frames` (the stream's response) and `frame1` (a decoded image).
   */
  static async open(sop, early = null) {
    const base = loopPath(sop);
    const frames = early && early.frames ? early.frames : fetch(`${base}/frames`);
    frames.catch(() => {});
    let info = early && early.info;
    if (!info) {
      const response = await fetch(base);
      if (!response.ok) throw await problemFrom(response);
      info = await response.json();
    }
    const loop = new Loop(info);
    performance.mark("cardiology:loop-info");
    loop.framesResponse = frames;
    if (early && early.frame1) {
      early.frame1.then((bitmap) => {
        if (bitmap) loop.setFrame(0, bitmap);
      });
    }
    return loop;
  }

  /** Stream every frame; resolves when all are decoded. */
  async load() {
    if (!this.info.frames_url) throw new Error("this loop is an encapsulated video: play its MP4");
    const response = await (this.framesResponse || fetch(this.info.frames_url));
    this.framesResponse = null;
    if (!response.ok) throw await problemFrom(response);
    // At most 4 decodes in flight, and frame 1 alone first: awaiting them also yields to the
    // event loop, so frames are drawn while the rest of the stream is still arriving.
    const inflight = new Set();
    await readParts(response, async (i, bytes) => {
      const decoding = createImageBitmap(new Blob([bytes], { type: "image/jpeg" })).then((bitmap) => {
        this.setFrame(i, bitmap);
        inflight.delete(decoding);
      });
      inflight.add(decoding);
      if (i === 0 || inflight.size >= 4) await Promise.race(inflight);
    });
    await Promise.all(inflight);
    if (this.loaded < this.frames.length) throw new Error(`only ${this.loaded} of ${this.frames.length} frames arrived`);
  }

  /** Keep a decoded frame; frame 1 may come twice (boot.js's early copy and the stream's). */
  setFrame(i, bitmap) {
    if (this.frames[i]) {
      if (bitmap.close) bitmap.close(); // an ImageBitmap; boot.js's frame 1 is an <img>
      return;
    }
    this.frames[i] = bitmap;
    if (i === 0) performance.mark("cardiology:frame1-decoded");
    this.loaded += 1;
    this.onFrame(i);
  }

  async loadEcg() {
    if (!this.info.ecg.present) {
      this.ecgSettled = true;
      return null;
    }
    const response = await fetch(this.info.ecg.url);
    if (!response.ok) throw await problemFrom(response);
    this.ecg = await response.json();
    this.ecgSettled = true;
    return this.ecg;
  }

  get duration() {
    return this.info.duration_ms;
  }

  /** The frame shown at loop time t (ms): the last frame whose start time is ≤ t. */
  frameAt(t) {
    const times = this.times;
    let lo = 0;
    let hi = times.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (times[mid] <= t) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** The cardiac cycle to show in lock-step: [first R, second R] when the ECG has two, else the whole loop. */
  cycle() {
    const r = this.info.ecg.r_waves_ms || [];
    if (r.length >= 2 && r[1] > r[0] && r[1] <= this.duration) return { start: r[0], end: r[1], byEcg: true };
    return { start: 0, end: this.duration, byEcg: false };
  }
}

/**
 * One clock for every cell. Alone, a loop plays in its own time. In lock-step, a shared
 * phase 0..1 runs over the reference loop's cycle and each loop maps it onto its own cycle
 * (R to R when the ECG gives two R waves, the whole loop otherwise), so systole lines up.
 */
export class Clock {
  constructor() {
    this.playing = false;
    this.speed = 1;
    this.loop = true;
    this.position = 0; // ms of reference time
    this.lastNow = null;
  }

  tick(now, period) {
    if (this.playing && this.lastNow !== null) {
      this.position += (now - this.lastNow) * this.speed;
      if (this.position >= period) {
        if (this.loop) this.position %= period;
        else {
          this.position = period - 0.001;
          this.playing = false;
        }
      }
    }
    this.lastNow = now;
  }

  play() {
    this.playing = true;
    this.lastNow = null;
  }

  pause() {
    this.playing = false;
  }
}

export { ProblemError };
