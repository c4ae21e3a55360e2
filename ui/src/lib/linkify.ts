// Splits message text into plain parts and links. Rendered as text nodes and
// <a> elements — never as HTML — so a message cannot inject markup.

export type Part = { kind: "text"; text: string } | { kind: "link"; text: string; href: string };

const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;
const TRAILING = /[.,;:!?)\]]+$/;

export function linkify(text: string): Part[] {
  const parts: Part[] = [];
  let last = 0;
  for (const m of text.matchAll(URL_RE)) {
    let url = m[0];
    const trail = url.match(TRAILING)?.[0] ?? "";
    // Keep a closing parenthesis that belongs to the URL, e.g. wiki links.
    const keep = trail.startsWith(")") && url.includes("(") ? 1 : 0;
    url = url.slice(0, url.length - trail.length + keep);
    const start = m.index ?? 0;
    if (start > last) parts.push({ kind: "text", text: text.slice(last, start) });
    parts.push({ kind: "link", text: url, href: url });
    last = start + url.length;
  }
  if (last < text.length) parts.push({ kind: "text", text: text.slice(last) });
  return parts;
}
