// Attachments in the UI: where the webview loads them from, how big they
// are, and how a search snippet's highlights become text runs.
import { convertFileSrc } from "@tauri-apps/api/core";
import type { Attachment } from "../bindings";

/** The URL of a blob (or its thumbnail) on the shell's confab-media scheme. */
export function mediaUrl(hash: string, thumbnail: boolean): string {
  const base = convertFileSrc(hash, "confab-media");
  return thumbnail ? `${base}/thumbnail` : base;
}

export function isImage(a: Attachment): boolean {
  return a.mime.startsWith("image/") && a.width !== null && a.width !== undefined;
}

/** "12 KB", "3.4 MB". */
export function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let n = bytes / 1024;
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return `${n < 10 ? n.toFixed(1) : Math.round(n)} ${units[u]}`;
}

/** A box for a thumbnail that keeps the image's shape within max × max. */
export function thumbBox(a: Attachment, max = 240): { width: number; height: number } {
  const w = a.width ?? max;
  const h = a.height ?? max;
  const scale = Math.min(1, max / Math.max(w, h));
  return { width: Math.max(40, Math.round(w * scale)), height: Math.max(40, Math.round(h * scale)) };
}

/** A snippet's parts: matched terms (between \u0002 and \u0003) flagged. */
export function snippetParts(snippet: string): { text: string; hit: boolean }[] {
  const out: { text: string; hit: boolean }[] = [];
  let hit = false;
  let run = "";
  for (const ch of snippet) {
    if (ch === "\u0002" || ch === "\u0003") {
      if (run) out.push({ text: run, hit });
      run = "";
      hit = ch === "\u0002";
    } else {
      run += ch;
    }
  }
  if (run) out.push({ text: run, hit });
  return out;
}

/** Reads a File as base64 (for the shell's send_file_data). */
export function fileToBase64(file: Blob): Promise<string> {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).replace(/^data:[^,]*,/, ""));
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}
