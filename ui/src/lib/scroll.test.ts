import { describe, expect, it } from "vitest";
import { atBottom, onArrival, onScroll } from "./scroll";

describe("scroll pinning", () => {
  it("treats the last few pixels as the bottom", () => {
    expect(atBottom(900, 100, 1000)).toBe(true);
    expect(atBottom(870, 100, 1000)).toBe(true);
    expect(atBottom(500, 100, 1000)).toBe(false);
  });
  it("follows new messages while pinned", () => {
    const r = onArrival({ pinned: true, unseen: 0 }, 3, false);
    expect(r.scrollToBottom).toBe(true);
    expect(r.state.unseen).toBe(0);
  });
  it("counts instead of yanking when scrolled up, and resets at the bottom", () => {
    let s = onScroll({ pinned: true, unseen: 0 }, false);
    let r = onArrival(s, 2, false);
    expect(r.scrollToBottom).toBe(false);
    r = onArrival(r.state, 1, false);
    expect(r.state.unseen).toBe(3);
    s = onScroll(r.state, true);
    expect(s).toEqual({ pinned: true, unseen: 0 });
  });
  it("jumps down for your own message", () => {
    const r = onArrival({ pinned: false, unseen: 4 }, 1, true);
    expect(r).toEqual({ state: { pinned: true, unseen: 0 }, scrollToBottom: true });
  });
});
