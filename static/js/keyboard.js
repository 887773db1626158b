// Keyboard shortcuts shared by Tessera's viewers.
//
//   const unbind = bindKeys({
//     "ArrowDown": () => step(1),
//     "Shift+ArrowDown": () => step(10),
//     "?": toggleHelp,
//   });
//
// Key names are KeyboardEvent.key values; modifiers are written "Ctrl+", "Alt+", "Meta+"
// and, for keys whose name does not already carry it (arrows, PageUp, Enter…), "Shift+".
// Events typed into text fields, selects and range sliders are left alone so forms keep
// working. A handler may return false to let the event through (no preventDefault).

const EDITABLE = "input, select, textarea, [contenteditable=''], [contenteditable='true']";

/** The normalised name of a key event, e.g. "Ctrl+Shift+ArrowUp" or "?" or "w". */
export function keyName(event) {
  let key = event.key;
  if (key === " " || key === "Spacebar") key = "Space";
  if (key.length === 1) key = key.toLowerCase() === key.toUpperCase() ? key : event.shiftKey ? key.toUpperCase() : key.toLowerCase();
  const printable = key.length === 1;
  const parts = [];
  if (event.ctrlKey) parts.push("Ctrl");
  if (event.altKey) parts.push("Alt");
  if (event.metaKey) parts.push("Meta");
  if (event.shiftKey && !printable) parts.push("Shift");
  parts.push(key);
  return parts.join("+");
}

/** True when the event comes from a place where keys mean typing (fields, sliders). */
export function isTypingTarget(event) {
  const target = event.target;
  return Boolean(target && target.closest && target.closest(EDITABLE));
}

/**
 * Bind a map of key name → handler(event) on `target` (default: document).
 * Returns a function that removes the binding.
 */
export function bindKeys(map, { target = document, allowInFields = [] } = {}) {
  const listener = (event) => {
    if (event.defaultPrevented || event.isComposing) return;
    const name = keyName(event);
    const handler = map[name];
    if (!handler) return;
    if (isTypingTarget(event) && !allowInFields.includes(name)) return;
    if (handler(event) !== false) event.preventDefault();
  };
  target.addEventListener("keydown", listener);
  return () => target.removeEventListener("keydown", listener);
}

/**
 * Mouse-wheel steps for scrolling through frames: one step per wheel notch, trackpad
 * deltas accumulated so a slow swipe still moves one frame at a time.
 * Calls onStep(+1 | -1) and prevents page scrolling over `element`.
 */
export function bindWheelSteps(element, onStep, { pixelsPerStep = 60 } = {}) {
  let accumulated = 0;
  let last = 0;
  const listener = (event) => {
    event.preventDefault();
    const now = event.timeStamp;
    if (now - last > 400) accumulated = 0;
    last = now;
    const delta = event.deltaMode === 1 ? event.deltaY * 20 : event.deltaMode === 2 ? event.deltaY * 400 : event.deltaY;
    if (Math.abs(delta) >= pixelsPerStep) {
      accumulated = 0;
      onStep(Math.sign(delta));
      return;
    }
    accumulated += delta;
    while (Math.abs(accumulated) >= pixelsPerStep) {
      const sign = Math.sign(accumulated);
      accumulated -= sign * pixelsPerStep;
      onStep(sign);
    }
  };
  element.addEventListener("wheel", listener, { passive: false });
  return () => element.removeEventListener("wheel", listener);
}
