import type { CallRecord } from "../bindings";

/** A call's entry as a line, as the core words it (`CallRecord::summary`):
 *  "Missed voice call", "Video call · 3:12". */
export function callSummary(c: CallRecord): string {
  const kind = c.video ? "video" : "voice";
  switch (c.outcome.type) {
    case "missed":
      return `Missed ${kind} call`;
    case "declined":
      return `Declined ${kind} call`;
    case "cancelled":
      return `Cancelled ${kind} call`;
    case "completed": {
      const s = Math.floor(Math.max(0, c.outcome.duration_ms) / 1000);
      const two = (n: number) => String(n).padStart(2, "0");
      const clock = s >= 3600 ? `${Math.floor(s / 3600)}:${two(Math.floor(s / 60) % 60)}:${two(s % 60)}` : `${Math.floor(s / 60)}:${two(s % 60)}`;
      return `${c.video ? "Video" : "Voice"} call · ${clock}`;
    }
  }
}
