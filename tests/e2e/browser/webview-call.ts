// The app UI's own call module (ui/src/lib/webrtc.ts, with the generated
// bindings) in a real browser engine that has WebRTC. What the Tauri shell
// would carry, its IPC (commands, and the events the UI listens to), goes
// over a WebSocket to a bridge in the test that runs the real client core
// (tests/e2e/webview_calls.rs). Parameters come as JSON in the fragment.
import { connectCallMedia, type CallMedia } from "../../../ui/src/lib/webrtc";

const P = JSON.parse(decodeURIComponent(location.hash.slice(1)));
const ws = new WebSocket(P.bridge);
let next = 1;
const replies = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();
const callbacks = new Map<number, (v: unknown) => void>();
const listeners = new Map<string, number[]>();

// The part of Tauri's IPC that @tauri-apps/api uses.
(window as any).__TAURI_INTERNALS__ = {
  transformCallback(cb: (v: unknown) => void) {
    const id = next++;
    callbacks.set(id, cb);
    return id;
  },
  unregisterCallback(id: number) {
    callbacks.delete(id);
  },
  async invoke(cmd: string, args: any) {
    if (cmd === "plugin:event|listen") {
      listeners.set(args.event, [...(listeners.get(args.event) ?? []), args.handler]);
      return next++;
    }
    if (cmd === "plugin:event|unlisten") return null;
    const id = next++;
    ws.send(JSON.stringify({ id, cmd, args }));
    // A command's error arrives as the AppError itself, as from Tauri.
    return new Promise((resolve, reject) => replies.set(id, { resolve, reject }));
  },
};

let media: CallMedia | null = null;

// The dominant frequency of what is heard, sampled every 100 ms.
const peaks: number[] = [];
let analyser: { an: AnalyserNode; ctx: AudioContext } | null = null;
function listenTo(remote: MediaStream) {
  const track = remote.getAudioTracks()[0];
  if (!track || analyser) return;
  // Chromium feeds a remote stream to Web Audio only while a media
  // element also plays it.
  const el = new Audio();
  el.srcObject = new MediaStream([track]);
  el.muted = true;
  el.play().catch(() => {});
  const ctx = new AudioContext();
  const an = ctx.createAnalyser();
  an.fftSize = 8192;
  ctx.createMediaStreamSource(new MediaStream([track])).connect(an);
  analyser = { an, ctx };
}
setInterval(() => {
  if (!analyser) return;
  const { an, ctx } = analyser;
  const bins = new Float32Array(an.frequencyBinCount);
  an.getFloatFrequencyData(bins);
  let best = 0;
  for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
  if (bins[best] > -70) peaks.push(Math.round((best * ctx.sampleRate) / an.fftSize));
}, 100);

ws.onmessage = async (m) => {
  const f = JSON.parse(m.data);
  if (typeof f.id === "number") {
    const r = replies.get(f.id);
    replies.delete(f.id);
    if (r) "ok" in f ? r.resolve(f.ok) : r.reject(f.err);
  } else if (f.event) {
    for (const h of listeners.get(f.event) ?? []) callbacks.get(h)?.({ event: f.event, id: 0, payload: f.payload });
  } else if (f.probe) {
    // What the test asks: what this side heard, sent and shows.
    const view = media?.view;
    const out = {
      peaks: peaks.splice(0),
      stats: (await media?.stats()) ?? {},
      call: view?.call ?? null,
      camera: view?.camera ?? false,
      remote_video: view?.remoteVideo ?? false,
      local_video: (view?.local?.getVideoTracks().length ?? 0) > 0,
      notice: view?.notice ?? null,
    };
    ws.send(JSON.stringify({ probe: out }));
  }
};

ws.onopen = async () => {
  // As the app does at start, without audio processing (the test measures
  // the tone's level at the other end).
  const connected = await connectCallMedia((view) => {
    if (view.remote) listenTo(view.remote);
    if (!view.call) analyser = null;
  }, false);
  media = connected.media;
  ws.send(JSON.stringify({ ready: connected.caps }));
};
