// Early start for the cardiology viewer: a small classic script, loaded async at the top of
// viewer.html, that asks for what frame 1 needs while the viewer's module graph (viewer.js,
// player.js, measure.js, dicomweb.js, session.js, keyboard.js) is still loading:
//
//   * the study's loop index with `?series=`, which also carries the JSON of the loop shown
//     first (`first`), so no separate loop request stands before frame 1;
//   * in parallel, frame 1 of that loop (`…/series/{series}/first-frame.jpg`), loaded and
//     decoded by the browser's image loader (an <img> never put in the page);
//   * as soon as the index names the loop, its frame stream (the rest).
//
// Before, frame 1 was asked for only after every module had loaded and the index had come
// back: a chain of round trips, each slow on a busy machine.
//
// It only starts GET requests and keeps the promises on window.__cardiologyBoot; viewer.js
// takes them (or, if this script failed or came late, asks for everything itself). It
// touches no DOM. Credentials are the browser's default (same-origin), as session.js sets;
// a 401 is left for viewer.js to ask again through session.js, which goes to the login page.
(() => {
  "use strict";
  const params = new URLSearchParams(location.search);
  const study = params.get("study") || "";
  const series = params.get("series") || "";
  if (!study || window.__cardiologyBoot) return; // no study, or viewer.js already started without us
  performance.mark("cardiology:boot");
  const options = { credentials: "same-origin" };
  const enc = encodeURIComponent;
  const loopPath = (id) => `/cardiology/loops/${id.split("/").map(enc).join("/")}`;
  const loops = new Map(); // loop id -> { frames: Promise<Response>, frame1: Promise<HTMLImageElement|null> }
  const index = fetch(`/cardiology/studies/${enc(study)}/loops?series=${enc(series)}`, options);
  index.catch(() => {});
  // Frame 1 through the browser's image loader: fetched and decoded off the main thread with
  // no Blob round trip; which loop it is comes with the index (`first`), chosen by the same rule.
  let frame1 = null;
  if (series) {
    const image = new Image();
    image.decoding = "async";
    image.src = `/cardiology/studies/${enc(study)}/series/${enc(series)}/first-frame.jpg`;
    frame1 = image
      .decode()
      .then(() => image)
      .catch(() => null);
  }
  const ready = index
    .then((response) => (response.ok ? response.clone().json() : null))
    .then((body) => {
      const id = body && body.first ? body.first.sop_instance_uid : null;
      if (!id) return;
      const frames = fetch(`${loopPath(id)}/frames`, options);
      frames.catch(() => {});
      loops.set(id, { frames, frame1 });
    })
    .catch(() => {});
  window.__cardiologyBoot = {
    study,
    index,
    ready,
    /** The early requests of a loop, once: a response body can be read only once. */
    take(id) {
      const early = loops.get(id);
      loops.delete(id);
      return early || null;
    },
  };
})();
