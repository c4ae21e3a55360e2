// Status ticks for a message: queued clock → sent ✓ → delivered ✓✓ → read (coloured ✓✓).
import type { MessageStatus } from "../bindings";

export type Tick = { glyph: string; label: string; tone: "pending" | "plain" | "read" | "error" | "none" };

export function tick(status: MessageStatus): Tick {
  switch (status) {
    case "queued":
      return { glyph: "🕓", label: "Waiting to send", tone: "pending" };
    case "sent":
      return { glyph: "✓", label: "Sent", tone: "plain" };
    case "delivered":
      return { glyph: "✓✓", label: "Delivered", tone: "plain" };
    case "read":
      return { glyph: "✓✓", label: "Read", tone: "read" };
    case "failed":
      return { glyph: "!", label: "Not sent", tone: "error" };
    default:
      return { glyph: "", label: "", tone: "none" };
  }
}
