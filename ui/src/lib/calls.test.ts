import { describe, expect, it } from "vitest";
import { callClock, callMissed, callSummary, endedText } from "./calls";

describe("callSummary", () => {
  const call = "00000000-0000-0000-0000-000000000000";
  it("words outcomes as the core does", () => {
    expect(callSummary({ call, video: false, outcome: { type: "missed" } })).toBe("Missed voice call");
    expect(callSummary({ call, video: true, outcome: { type: "completed", duration_ms: 192_400 } })).toBe("Video call · 3:12");
    expect(callSummary({ call, video: false, outcome: { type: "completed", duration_ms: 3_723_000 } })).toBe("Voice call · 1:02:03");
  });
});

describe("the call screen's words", () => {
  it("runs a clock and says how a call ended", () => {
    expect(callClock(7_900)).toBe("0:07");
    expect(callClock(-5)).toBe("0:00");
    expect(endedText({ reason: "hung_up", duration_ms: 42_000 })).toBe("Call ended · 0:42");
    expect(endedText({ reason: "declined", duration_ms: null })).toBe("Declined");
    expect(endedText({ reason: "missed", duration_ms: null })).toBe("No answer");
    expect(endedText({ reason: "cancelled", duration_ms: null }, false)).toBe("Missed call");
    expect(endedText({ reason: "busy", duration_ms: 5 })).toBe("Busy");
    expect(endedText({ reason: "answered_elsewhere", duration_ms: null })).toBe("Answered on another device");
  });
  it("marks the calls that did not reach the user", () => {
    const call = "00000000-0000-0000-0000-000000000000";
    expect(callMissed({ call, video: false, outcome: { type: "missed" } })).toBe(true);
    expect(callMissed({ call, video: false, outcome: { type: "completed", duration_ms: 1 } })).toBe(false);
  });
});
