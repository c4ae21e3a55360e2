// Windowing for long message lists: only the rows near the viewport are in
// the DOM; spacers stand in for the rest. Heights are measured as rows
// render and estimated until then.

export type Window = { start: number; end: number; padTop: number; padBottom: number; total: number };

/**
 * Which rows [start, end) to render for a viewport at `scrollTop` of height
 * `viewport`, with `overscan` pixels of extra rows above and below.
 */
export function computeWindow(heights: ArrayLike<number>, scrollTop: number, viewport: number, overscan = 600): Window {
  const n = heights.length;
  let total = 0;
  for (let i = 0; i < n; i++) total += heights[i];
  const top = Math.max(0, scrollTop - overscan);
  const bottom = scrollTop + viewport + overscan;
  let start = 0;
  let y = 0;
  while (start < n && y + heights[start] <= top) {
    y += heights[start];
    start++;
  }
  const padTop = y;
  let end = start;
  while (end < n && y < bottom) {
    y += heights[end];
    end++;
  }
  return { start, end, padTop, padBottom: total - y, total };
}
