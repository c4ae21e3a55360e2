import { describe, expect, it } from "vitest";
import { callSummary } from "./calls";

describe("callSummary", () => {
  const call = "00000000-0000-0000-0000-000000000000";
  it("words outcomes as the core does", () => {
    expect(callSummary({ call, video: false, outcome: { type: "missed" } })).toBe("Missed voice call");
    expect(callSummary({ call, video: true, outcome: { type: "completed", duration_ms: 192_400 } })).toBe("Video call · 3:12");
    expect(callSummary({ call, video: false, outcome: { type: "completed", duration_ms: 3_723_000 } })).toBe("Voice call · 1:02:03");
  });
});
