// App state: what the UI shows, kept in step with the core's events. The
// core and its cache are the source of truth; this is a view of them.
import { events } from "../bindings";
import type { CallCapabilities, CallView, ChatMessage, ClientEvent, ConnectionState, ConversationSummary, SearchResult, SessionInfo, Settings } from "../bindings";
import { api } from "./api";
import { CallMedia, connectCallMedia, type MediaView } from "./webrtc";

export const PAGE = 50;

type Typing = { user: string; username: string; until: number };

export const app = $state({
  ready: false,
  session: null as SessionInfo | null,
  settings: null as Settings | null,
  connection: null as ConnectionState | null,
  conversations: [] as ConversationSummary[],
  openId: null as string | null,
  messages: [] as ChatMessage[],
  hasOlder: true,
  typing: {} as Record<string, Typing[]>,
  arrivals: 0,
  ownArrival: false,
  /** This device's call: live, or ended a moment ago (then cleared). */
  call: null as CallView | null,
  callCaps: { audio: true, video: false } as CallCapabilities,
  /** The call screen is folded into a bar while the user reads chats. */
  callMinimized: false,
  /** The call's media, where the webview carries it (see webrtc.ts). */
  media: null as MediaView | null,
  /** Upload progress of own queued messages, by client id. */
  uploads: {} as Record<string, { sent: number; total: number }>,
  /** A message to show and mark (a search hit that was opened). */
  highlight: null as { conversation: string; seq: number } | null,
});

/** The webview's WebRTC side of calls; null where the native engine carries them. */
export let callMedia: CallMedia | null = null;

/** Saves a change to the settings; throws (and changes nothing) if the shell refuses it. */
export async function updateSettings(change: Partial<Settings>) {
  if (!app.settings) return;
  const next = { ...app.settings, ...change };
  await api.saveSettings(next);
  app.settings = next;
}

/** How long an ended call's screen stays up, saying how it ended. */
export const ENDED_SHOWN_MS = 2500;

function onCall(call: CallView) {
  if (app.call?.call !== call.call) app.callMinimized = false;
  app.call = call;
  if (call.phase.phase === "ended") {
    setTimeout(() => {
      if (app.call?.call === call.call && app.call.phase.phase === "ended") app.call = null;
    }, ENDED_SHOWN_MS);
  }
}

const sound = typeof Audio !== "undefined" ? new Audio("/notify.wav") : null;

/**
 * Wraps a reload so that calls during a run fold into one more run: a burst
 * of events costs two reloads, not one each.
 */
function coalesced(run: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | null = null;
  let again = false;
  return () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await run();
        } while (again);
      } finally {
        running = null;
      }
    })();
    return running;
  };
}

/** Reloads the conversation list (coalesced). */
export const refreshConversations = coalesced(async () => {
  app.conversations = await api.conversations();
});

export async function openConversation(id: string | null) {
  app.openId = id;
  app.highlight = null;
  app.messages = [];
  app.hasOlder = true;
  await api.setAttention(id, null);
  if (!id) return;
  const page = await api.history(id, null, PAGE);
  if (app.openId !== id) return;
  app.messages = page;
  app.hasOlder = page.filter((m) => m.seq !== null).length >= PAGE;
  markRead();
}

/** Opens a conversation at one message, with the history around it. */
export async function openAt(conversation: string, seq: number) {
  app.openId = conversation;
  app.highlight = { conversation, seq };
  await api.setAttention(conversation, null);
  const page = await api.historyAround(conversation, seq);
  if (app.openId !== conversation) return;
  app.messages = page;
  app.hasOlder = true;
}

/** Search results: this device's first (instant), then the server's. */
export async function searchMessages(
  query: string,
  conversation: string | null,
  onResults: (hits: SearchResult[], done: boolean) => void,
) {
  const local = await api.searchMessages(query, conversation).catch(() => [] as SearchResult[]);
  onResults(local, false);
  const remote = await api.searchServer(query, conversation).catch(() => [] as SearchResult[]);
  const key = (h: SearchResult) => `${h.conversation}:${h.seq}`;
  const seen = new Set(local.filter((h) => h.seq !== null).map(key));
  const merged = [...local, ...remote.filter((h) => !seen.has(key(h)))].sort((a, b) => b.ts - a.ts);
  onResults(merged, true);
}

export async function loadOlder() {
  const id = app.openId;
  const oldest = app.messages.find((m) => m.seq !== null)?.seq;
  if (!id || !app.hasOlder || oldest == null) return 0;
  const page = await api.history(id, oldest, PAGE);
  if (app.openId !== id) return 0;
  app.hasOlder = page.length >= PAGE;
  app.messages = [...page, ...app.messages];
  return page.length;
}

export function markRead() {
  const id = app.openId;
  // Read means shown on screen: the conversation is open in a visible window.
  if (!id || (typeof document !== "undefined" && document.visibilityState !== "visible")) return;
  const newest = app.messages.reduce((n, m) => (m.seq !== null && m.seq > n ? m.seq : n), 0);
  // Only when it moves forward (the list's unread count may be stale here).
  if (newest > (markedRead[id] ?? 0)) {
    markedRead[id] = newest;
    api.markRead(id, newest).then(refreshConversations, () => (markedRead[id] = 0));
  }
}

const markedRead: Record<string, number> = {};

function upsert(message: ChatMessage) {
  if (message.conversation !== app.openId) return false;
  const i = app.messages.findIndex((m) => m.id === message.id);
  if (i >= 0) {
    app.messages[i] = message;
    return false;
  }
  app.messages = [...app.messages, message].sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity) || a.ts - b.ts);
  return true;
}

function onEvent(e: ClientEvent) {
  switch (e.type) {
    case "connection":
      app.connection = e.state;
      break;
    case "message_added":
      if (!e.live) {
        // Catching up: hundreds may come at once. Reload the open
        // conversation once per burst instead of inserting each.
        if (e.message.conversation === app.openId) {
          reloadOpenCoalesced().then(() => {
            app.arrivals += 1;
            app.ownArrival = false;
            markRead();
          });
        }
        refreshConversations();
        break;
      }
      if (upsert(e.message)) {
        app.arrivals += 1;
        app.ownArrival = e.message.sender === app.session?.user;
        markRead();
      }
      clearTyping(e.message.conversation, e.message.sender);
      refreshConversations();
      break;
    case "message_updated":
      // A message queued on this device first appears here: jump down to it.
      if (upsert(e.message)) {
        app.arrivals += 1;
        app.ownArrival = e.message.sender === app.session?.user;
      }
      refreshConversations();
      break;
    case "receipt":
    case "conversation_updated":
    case "sync_completed":
      refreshConversations();
      if (e.type === "sync_completed" && app.openId) reloadOpen();
      if (e.type === "receipt" && app.openId === e.conversation) reloadOpen();
      break;
    case "typing": {
      const list = (app.typing[e.conversation] ?? []).filter((t) => t.user !== e.user);
      list.push({ user: e.user, username: e.username, until: Date.now() + e.ttl_ms });
      app.typing[e.conversation] = list;
      setTimeout(() => pruneTyping(), e.ttl_ms + 50);
      break;
    }
    case "presence":
      refreshConversations();
      break;
    case "call":
      onCall(e.call);
      break;
    case "upload_progress":
      app.uploads[e.client_id] = { sent: e.sent, total: e.total };
      break;
    case "message_removed":
      if (e.conversation === app.openId) app.messages = app.messages.filter((m) => m.id !== e.id);
      refreshConversations();
      break;
  }
}

/** Reloads the open conversation (coalesced). */
const reloadOpenCoalesced = coalesced(() => reloadOpen());

// Coalesced: one receipts frame can move a thousand members' ticks.
const reloadOpen = coalesced(async () => {
  const id = app.openId;
  if (!id) return;
  const count = Math.max(PAGE, app.messages.filter((m) => m.seq !== null).length);
  const page = await api.history(id, null, Math.min(count, 500));
  if (app.openId === id) app.messages = page;
});

function clearTyping(conv: string, user: string) {
  if (app.typing[conv]) app.typing[conv] = app.typing[conv].filter((t) => t.user !== user);
}

function pruneTyping() {
  const now = Date.now();
  for (const k of Object.keys(app.typing)) app.typing[k] = app.typing[k].filter((t) => t.until > now);
}

export async function start() {
  await events.coreEvent.listen((ev) => onEvent(ev.payload));
  await events.openConversation.listen((ev) => {
    openConversation(ev.payload);
  });
  await events.playSound.listen(() => {
    sound?.play().catch(() => {});
  });
  // Before the session resumes calls, say where they can run.
  try {
    const connected = await connectCallMedia((view) => (app.media = view));
    callMedia = connected.media;
    app.callCaps = connected.caps;
  } catch (e) {
    console.warn("calls:", e);
  }
  app.settings = await api.settings();
  app.session = await api.session();
  if (app.session) {
    app.connection = await api.connectionState().catch(() => null);
    const call = await api.currentCall().catch(() => null);
    if (call && call.phase.phase !== "ended") onCall(call);
    await refreshConversations();
    // A notification that started the app (phones) names a conversation.
    const opened = await api.openedConversation().catch(() => null);
    if (opened) await openConversation(opened);
  }
  app.ready = true;
}
