import type { CallEndReason, CallRecord } from "../bindings";

/** A duration as a call clock: "0:07", "3:12", "1:02:03". */
export function callClock(ms: number): string {
  const s = Math.floor(Math.max(0, ms) / 1000);
  const two = (n: number) => String(n).padStart(2, "0");
  return s >= 3600 ? `${Math.floor(s / 3600)}:${two(Math.floor(s / 60) % 60)}:${two(s % 60)}` : `${Math.floor(s / 60)}:${two(s % 60)}`;
}

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
    case "completed":
      return `${c.video ? "Video" : "Voice"} call · ${callClock(c.outcome.duration_ms)}`;
  }
}

/** The entries a user should notice: calls that did not reach them. */
export function callMissed(c: CallRecord): boolean {
  return c.outcome.type === "missed" || c.outcome.type === "cancelled";
}

const ENDED: Record<CallEndReason, string> = {
  declined: "Declined",
  cancelled: "Cancelled",
  missed: "No answer",
  hung_up: "Call ended",
  superseded: "Call ended",
  answered_elsewhere: "Answered on another device",
  declined_elsewhere: "Declined on another device",
  busy: "Busy",
  connection_lost: "Connection lost",
  ended_here: "Call ended",
  failed: "Call failed",
};

/** How the call screen says a call ended: "Call ended · 0:42", "Busy";
 *  to the callee, a call that stopped ringing unanswered is missed. */
export function endedText(p: { reason: CallEndReason; duration_ms?: number | null }, outgoing = true): string {
  if (!outgoing && (p.reason === "missed" || p.reason === "cancelled")) return "Missed call";
  const text = ENDED[p.reason];
  return p.duration_ms != null && (p.reason === "hung_up" || p.reason === "ended_here" || p.reason === "connection_lost")
    ? `${text} · ${callClock(p.duration_ms)}`
    : text;
}
