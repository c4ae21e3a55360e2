// Calendar days (local time) for day separators and labels.

function dayKey(d: Date): string {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

export function dayLabel(ts: number, now: number = Date.now()): string {
  const d = new Date(ts);
  const today = new Date(now);
  const yesterday = new Date(now);
  yesterday.setDate(today.getDate() - 1);
  if (dayKey(d) === dayKey(today)) return "Today";
  if (dayKey(d) === dayKey(yesterday)) return "Yesterday";
  const sameYear = d.getFullYear() === today.getFullYear();
  return d.toLocaleDateString(undefined, { weekday: "short", day: "numeric", month: "short", ...(sameYear ? {} : { year: "numeric" }) });
}

/**
 * For each item (in order), the label of its day if it starts a new day,
 * else null: where the day separators go.
 */
export function dayBreaks<T extends { ts: number }>(items: T[], now: number = Date.now()): (string | null)[] {
  let prev = "";
  return items.map((item) => {
    const key = dayKey(new Date(item.ts));
    const label = key === prev ? null : dayLabel(item.ts, now);
    prev = key;
    return label;
  });
}

export function timeOfDay(ts: number): string {
  return new Date(ts).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}
