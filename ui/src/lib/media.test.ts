import { describe, expect, it } from "vitest";
import { formatSize, snippetParts, thumbBox } from "./media";

describe("media", () => {
  it("formats sizes", () => {
    expect(formatSize(512)).toBe("512 B");
    expect(formatSize(1536)).toBe("1.5 KB");
    expect(formatSize(20 * 1024 * 1024)).toBe("20 MB");
  });
  it("splits snippets into highlighted runs, never markup", () => {
    expect(snippetParts("a \u0002<b>kiwi\u0003 tree")).toEqual([
      { text: "a ", hit: false },
      { text: "<b>kiwi", hit: true },
      { text: " tree", hit: false },
    ]);
  });
  it("keeps a thumbnail's shape inside its box", () => {
    const a = { hash: "", name: "", size: 1, mime: "image/png", width: 800, height: 400, thumbnail: true };
    expect(thumbBox(a)).toEqual({ width: 240, height: 120 });
    expect(thumbBox({ ...a, width: 100, height: 50 })).toEqual({ width: 100, height: 50 });
  });
});
