import { describe, expect, it } from "vitest";
import { tick } from "./ticks";

describe("tick", () => {
  it("walks queued → sent → delivered → read", () => {
    expect(tick("queued")).toMatchObject({ glyph: "🕓", tone: "pending" });
    expect(tick("sent")).toMatchObject({ glyph: "✓", tone: "plain" });
    expect(tick("delivered")).toMatchObject({ glyph: "✓✓", tone: "plain" });
    expect(tick("read")).toMatchObject({ glyph: "✓✓", tone: "read" });
  });
  it("marks failures and shows nothing on others' messages", () => {
    expect(tick("failed").tone).toBe("error");
    expect(tick("received")).toMatchObject({ glyph: "", tone: "none" });
  });
});
