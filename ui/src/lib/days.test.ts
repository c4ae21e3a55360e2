import { describe, expect, it } from "vitest";
import { groupByDay } from "./days";

const at = (y: number, m: number, d: number, h: number) => new Date(y, m - 1, d, h).getTime();

describe("groupByDay", () => {
  it("splits at local midnight and labels today and yesterday", () => {
    const now = at(2026, 11, 22, 12);
    const msgs = [
      { ts: at(2026, 11, 20, 9) },
      { ts: at(2026, 11, 21, 23) },
      { ts: at(2026, 11, 22, 0) },
      { ts: at(2026, 11, 22, 11) },
    ];
    const days = groupByDay(msgs, now);
    expect(days.map((d) => d.items.length)).toEqual([1, 1, 2]);
    expect(days[1].label).toBe("Yesterday");
    expect(days[2].label).toBe("Today");
    expect(days[0].label).not.toBe("Today");
  });
  it("keeps an empty list empty", () => {
    expect(groupByDay([])).toEqual([]);
  });
});
