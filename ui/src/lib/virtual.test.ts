import { describe, expect, it } from "vitest";
import { computeWindow } from "./virtual";

describe("computeWindow", () => {
  it("renders only rows near the viewport of a 100,000-row list", () => {
    const heights = new Float64Array(100_000).fill(50);
    const w = computeWindow(heights, 2_500_000, 800, 200);
    expect(w.total).toBe(5_000_000);
    expect(w.start).toBe((2_500_000 - 200) / 50);
    expect(w.end - w.start).toBeLessThan(40);
    expect(w.padTop + (w.end - w.start) * 50 + w.padBottom).toBe(w.total);
  });
  it("uses measured heights", () => {
    const w = computeWindow([100, 10, 10, 300, 10], 105, 20, 0);
    expect([w.start, w.end]).toEqual([1, 4]);
    expect(w.padTop).toBe(100);
    expect(w.padBottom).toBe(10);
  });
  it("shows everything when it fits, and nothing for an empty list", () => {
    expect(computeWindow([40, 40, 40], 0, 800)).toMatchObject({ start: 0, end: 3, padTop: 0, padBottom: 0 });
    expect(computeWindow([], 0, 800)).toMatchObject({ start: 0, end: 0, total: 0 });
  });
});
