// Colour management in the viewers: a slide with an ICC profile can be shown as stored (the
// scanner's pixels untouched) or converted to sRGB by the server (modules/pathology/color.py),
// a tile variant of its own reached with ?color=srgb. The single and side-by-side viewers share this.

/** The colour in effect: 'srgb' only when it was chosen and the slide has a profile to convert from. */
export function effectiveColor(info, color) {
  return color === 'srgb' && info?.icc_profile ? 'srgb' : 'stored';
}

/** A DZI URL in the chosen colour; OpenSeadragon carries its query onto every tile URL. */
export function colorDzi(dzi, info, color) {
  if (effectiveColor(info, color) !== 'srgb') return dzi;
  const url = new URL(dzi, window.location.href);
  url.searchParams.set('color', 'srgb');
  return `${url.pathname}${url.search}`;
}

/** The "Colour" select for this slide: shown only with a profile, which its title names. */
export function showColorMode(select, info, color) {
  select.hidden = !info.icc_profile;
  select.title = info.icc_profile
    ? `ICC profile: ${info.icc_profile_description || 'unnamed'}. As stored: the scanner's pixels untouched; managed: converted to sRGB for this screen`
    : '';
  select.value = color;
  return effectiveColor(info, color);
}

/** Swap the viewer's image for another variant of the same slide (colour, optical path, focal
 *  plane) where it stands: a lone replaced image would send OpenSeadragon home, so the viewport
 *  is put back where it was. */
export function replaceInPlace(viewer, tileSource) {
  const viewport = viewer.viewport;
  const bounds = viewport.getBounds(true);
  viewer.addTiledImage({ tileSource, index: 0, replace: true, success: () => viewport.fitBounds(bounds, true) });
}
