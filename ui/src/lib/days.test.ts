import { describe, expect, it } from "vitest";
import { dayBreaks } from "./days";

const at = (y: number, m: number, d: number, h: number) => new Date(y, m - 1, d, h).getTime();

describe("dayBreaks", () => {
  it("starts a day at local midnight and labels today and yesterday", () => {
    const now = at(2026, 11, 22, 12);
    const msgs = [
      { ts: at(2026, 11, 20, 9) },
      { ts: at(2026, 11, 21, 23) },
      { ts: at(2026, 11, 22, 0) },
      { ts: at(2026, 11, 22, 11) },
    ];
    const breaks = dayBreaks(msgs, now);
    expect(breaks.map((b) => b !== null)).toEqual([true, true, true, false]);
    expect(breaks[1]).toBe("Yesterday");
    expect(breaks[2]).toBe("Today");
    expect(breaks[0]).not.toBe("Today");
  });
  it("keeps an empty list empty", () => {
    expect(dayBreaks([])).toEqual([]);
  });
});
