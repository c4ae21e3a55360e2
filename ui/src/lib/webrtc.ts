// The webview's side of calls, where the webview has WebRTC (WebView2,
// WKWebView, Android WebView): one RTCPeerConnection per call, driven by
// the core's requests (start, the other side's signals, ICE restart, mute,
// stop), reporting back what the core relays or must know (local signals,
// connected, lost, failed). The core keeps the call's state and signaling;
// this module owns only the media: devices, tracks, camera, screen share.
import { commands, events } from "../bindings";
import type {
  CallSignal_Serialize as CallSignal,
  ExternalMedia_Serialize as ExternalMedia,
  MediaEvent_Deserialize as MediaEvent,
  MediaParams_Serialize as MediaParams,
} from "../bindings";

/** Feature detection, not a platform list: WebKitGTK has neither. */
export function hasWebRTC(): boolean {
  return (
    typeof RTCPeerConnection === "function" &&
    typeof navigator !== "undefined" &&
    typeof navigator.mediaDevices?.getUserMedia === "function"
  );
}

export function canShareScreen(): boolean {
  return typeof navigator !== "undefined" && typeof navigator.mediaDevices?.getDisplayMedia === "function";
}

/** What the call screen shows of the media. */
export interface MediaView {
  call: string | null;
  /** What this device sends as video (camera or screen), for the preview. */
  local: MediaStream | null;
  /** What the other side sends (audio, and video in a video call). */
  remote: MediaStream | null;
  /** The other side's video is arriving. */
  remoteVideo: boolean;
  /** The call has a video channel (camera and screen share work). */
  video: boolean;
  camera: boolean;
  sharing: boolean;
  microphoneId: string | null;
  cameraId: string | null;
  /** Something went wrong that the call survives (no camera, say). */
  notice: string | null;
}

export interface Devices {
  microphones: MediaDeviceInfo[];
  cameras: MediaDeviceInfo[];
  speakers: MediaDeviceInfo[];
}

export type Report = (call: string, event: MediaEvent) => Promise<unknown>;

function idle(): MediaView {
  return {
    call: null,
    local: null,
    remote: null,
    remoteVideo: false,
    video: false,
    camera: false,
    sharing: false,
    microphoneId: null,
    cameraId: null,
    notice: null,
  };
}

/** A clear sentence for a refused or missing device. */
export function deviceError(e: unknown, device: "microphone" | "camera" | "screen"): string {
  const name = (e as { name?: string } | null)?.name ?? "";
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
    return device === "screen"
      ? "Screen sharing was not allowed."
      : `Confab may not use the ${device}. Allow ${device} access for Confab in your system's privacy settings, then try again.`;
  }
  if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") {
    return `No ${device} found.`;
  }
  if (name === "NotReadableError" || name === "TrackStartError") {
    return `The ${device} could not be opened; another app may be using it.`;
  }
  return `The ${device} is not available (${(e as Error)?.message ?? String(e)}).`;
}

export class CallMedia {
  view: MediaView = idle();
  /** Whether to start the camera when a video call starts (Accept as voice says no). */
  wantCamera = true;
  private pc: RTCPeerConnection | null = null;
  private params: MediaParams | null = null;
  private mic: MediaStreamTrack | null = null;
  private cam: MediaStreamTrack | null = null;
  private screen: MediaStreamTrack | null = null;
  private audioSender: RTCRtpSender | null = null;
  private videoSender: RTCRtpSender | null = null;
  private pending: RTCIceCandidateInit[] = [];
  private connected = false;
  private muted = false;
  private queue: Promise<void> = Promise.resolve();

  constructor(
    private report: Report,
    private changed: (view: MediaView) => void = () => {},
    /** Echo cancelling, gain control and noise suppression (a test measuring a tone turns them off). */
    private processing = true,
  ) {}

  /** The core's requests, applied one after another, in order. */
  handle(request: ExternalMedia): Promise<void> {
    this.queue = this.queue.then(() => this.apply(request)).catch((e) => console.warn("call media:", e));
    return this.queue;
  }

  private async apply(r: ExternalMedia) {
    if (r.type === "start") return this.start(r.params);
    if (!this.params || r.call !== this.params.call) return;
    switch (r.type) {
      case "signal":
        return this.signal(r.signal);
      case "restart_ice":
        if (this.params.offerer) await this.offer(true);
        return;
      case "mute":
        this.muted = r.muted;
        if (this.mic) this.mic.enabled = !r.muted;
        return;
      case "stop":
        return this.stop();
    }
  }

  private audioConstraints(deviceId?: string | null): MediaTrackConstraints {
    const c: MediaTrackConstraints = {
      echoCancellation: this.processing,
      autoGainControl: this.processing,
      noiseSuppression: this.processing,
    };
    if (deviceId) c.deviceId = { exact: deviceId };
    return c;
  }

  private videoConstraints(deviceId?: string | null): MediaTrackConstraints {
    const c: MediaTrackConstraints = { width: { ideal: 1280 }, height: { ideal: 720 } };
    if (deviceId) c.deviceId = { exact: deviceId };
    return c;
  }

  private async start(params: MediaParams) {
    this.stop();
    this.params = params;
    this.view = { ...idle(), call: params.call, video: params.video };
    const pc = new RTCPeerConnection({
      iceServers: params.ice_servers.map((s) => ({
        urls: s.urls,
        username: s.username ?? undefined,
        credential: s.credential ?? undefined,
      })),
    });
    this.pc = pc;
    const call = params.call;
    pc.onicecandidate = (e) => {
      if (!e.candidate?.candidate) return;
      this.send(call, {
        type: "signal",
        value: {
          type: "candidate",
          candidate: e.candidate.candidate,
          sdp_mid: e.candidate.sdpMid ?? null,
          sdp_m_line_index: e.candidate.sdpMLineIndex ?? null,
        },
      });
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      const s = pc.connectionState;
      if (s === "connected" && !this.connected) {
        this.connected = true;
        this.send(call, { type: "connected" });
      } else if ((s === "disconnected" || s === "failed") && this.connected) {
        // The core decides: the offerer restarts ICE, the call shows
        // "Reconnecting…", and gives up after its grace.
        this.connected = false;
        this.send(call, { type: "lost" });
      }
    };
    pc.ontrack = (e) => {
      if (this.pc !== pc) return;
      const remote = this.view.remote ?? new MediaStream();
      remote.addTrack(e.track);
      if (e.track.kind === "video") {
        const live = () => this.update({ remoteVideo: !e.track.muted && e.track.readyState === "live" });
        e.track.onunmute = live;
        e.track.onmute = live;
        e.track.onended = live;
      }
      this.update({ remote });
    };

    // The microphone is required; the camera is not (the call goes on
    // with audio and says why).
    let stream: MediaStream;
    const camera = params.video && this.wantCamera;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: this.audioConstraints(), video: camera && this.videoConstraints() });
    } catch (e) {
      if (!camera) return this.fail(call, deviceError(e, "microphone"));
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: this.audioConstraints() });
        this.update({ notice: deviceError(e, "camera") });
      } catch (e2) {
        return this.fail(call, deviceError(e2, "microphone"));
      }
    }
    if (this.pc !== pc) {
      // Stopped while the devices opened.
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    this.mic = stream.getAudioTracks()[0] ?? null;
    this.cam = stream.getVideoTracks()[0] ?? null;
    if (this.mic) this.mic.enabled = !this.muted;
    this.update({
      camera: this.cam !== null,
      local: this.cam ? new MediaStream([this.cam]) : null,
      microphoneId: this.mic?.getSettings().deviceId ?? null,
      cameraId: this.cam?.getSettings().deviceId ?? null,
    });
    if (params.offerer) {
      // Transceivers made here, so a camera turned on later or a screen
      // shared needs no renegotiation.
      this.audioSender = pc.addTransceiver(this.mic ?? "audio", { direction: "sendrecv" }).sender;
      if (params.video) this.videoSender = pc.addTransceiver(this.cam ?? "video", { direction: "sendrecv" }).sender;
      await this.offer(false);
    }
    // The answerer attaches its tracks to the offer's transceivers.
  }

  private async offer(iceRestart: boolean) {
    const pc = this.pc;
    if (!pc || !this.params) return;
    const offer = await pc.createOffer({ iceRestart });
    await pc.setLocalDescription(offer);
    await this.send(this.params.call, { type: "signal", value: { type: "offer", sdp: pc.localDescription?.sdp ?? offer.sdp ?? "" } });
  }

  private async signal(s: CallSignal) {
    const pc = this.pc;
    if (!pc || !this.params) return;
    const call = this.params.call;
    if (s.type === "offer") {
      await pc.setRemoteDescription({ type: "offer", sdp: s.sdp });
      for (const t of pc.getTransceivers()) {
        const kind = t.receiver.track.kind;
        if (kind === "audio" && !this.audioSender) {
          this.audioSender = t.sender;
          await t.sender.replaceTrack(this.mic);
          t.direction = "sendrecv";
        } else if (kind === "video" && !this.videoSender && this.params.video) {
          this.videoSender = t.sender;
          await t.sender.replaceTrack(this.screen ?? this.cam);
          t.direction = "sendrecv";
        }
      }
      await this.flushCandidates();
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      await this.send(call, { type: "signal", value: { type: "answer", sdp: pc.localDescription?.sdp ?? answer.sdp ?? "" } });
    } else if (s.type === "answer") {
      await pc.setRemoteDescription({ type: "answer", sdp: s.sdp });
      await this.flushCandidates();
    } else {
      const candidate = { candidate: s.candidate, sdpMid: s.sdp_mid, sdpMLineIndex: s.sdp_m_line_index };
      if (!pc.remoteDescription) {
        // Bounded: a call gathers a handful.
        if (this.pending.length < 64) this.pending.push(candidate);
        return;
      }
      await pc.addIceCandidate(candidate).catch((e) => console.warn("ICE candidate:", e));
    }
  }

  private async flushCandidates() {
    const pc = this.pc;
    if (!pc) return;
    for (const c of this.pending.splice(0)) await pc.addIceCandidate(c).catch((e) => console.warn("ICE candidate:", e));
  }

  private async send(call: string, event: MediaEvent) {
    try {
      await this.report(call, event);
    } catch (e) {
      // The core has moved on (the call ended meanwhile).
      console.debug("call media report:", e);
    }
  }

  private async fail(call: string, message: string) {
    await this.send(call, { type: "failed", value: message });
    this.stop();
  }

  private stop() {
    for (const t of [this.mic, this.cam, this.screen]) t?.stop();
    this.pc?.close();
    this.pc = null;
    this.params = null;
    this.mic = this.cam = this.screen = null;
    this.audioSender = this.videoSender = null;
    this.pending = [];
    this.connected = false;
    this.muted = false;
    this.update(idle());
  }

  private update(change: Partial<MediaView>) {
    this.view = { ...this.view, ...change };
    this.changed(this.view);
  }

  private sentVideo(): MediaStreamTrack | null {
    return this.screen ?? this.cam;
  }

  private async sendVideo() {
    const t = this.sentVideo();
    await this.videoSender?.replaceTrack(t);
    this.update({ local: t ? new MediaStream([t]) : null, camera: this.cam !== null, sharing: this.screen !== null });
  }

  /** Turns the camera on or off (a video call's). */
  async setCamera(on: boolean): Promise<void> {
    this.wantCamera = on;
    if (!this.params?.video || !this.pc) return;
    if (on && !this.cam) {
      try {
        const s = await navigator.mediaDevices.getUserMedia({ video: this.videoConstraints(this.view.cameraId) });
        this.cam = s.getVideoTracks()[0] ?? null;
        this.update({ notice: null, cameraId: this.cam?.getSettings().deviceId ?? null });
      } catch (e) {
        this.update({ notice: deviceError(e, "camera") });
        return;
      }
    } else if (!on && this.cam) {
      // Stopped, not just disabled: the camera's light goes off.
      this.cam.stop();
      this.cam = null;
    }
    await this.sendVideo();
  }

  /** Shares the screen in place of the camera, or goes back to the camera. */
  async shareScreen(on: boolean): Promise<void> {
    if (!this.params?.video || !this.pc) return;
    if (on && !this.screen) {
      try {
        const s = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
        const track = s.getVideoTracks()[0];
        if (!track) return;
        // The platform's own "Stop sharing" ends the track.
        track.onended = () => {
          if (this.screen === track) void this.shareScreen(false);
        };
        this.screen = track;
      } catch (e) {
        this.update({ notice: deviceError(e, "screen") });
        return;
      }
    } else if (!on && this.screen) {
      this.screen.stop();
      this.screen = null;
    }
    await this.sendVideo();
  }

  /** The microphones, cameras and speakers there are (labels once a call has been allowed). */
  async devices(): Promise<Devices> {
    const all = await navigator.mediaDevices.enumerateDevices();
    return {
      microphones: all.filter((d) => d.kind === "audioinput"),
      cameras: all.filter((d) => d.kind === "videoinput"),
      speakers: all.filter((d) => d.kind === "audiooutput"),
    };
  }

  /** Switches the microphone mid-call; mute carries over. */
  async useMicrophone(deviceId: string): Promise<void> {
    if (!this.pc) return;
    try {
      const s = await navigator.mediaDevices.getUserMedia({ audio: this.audioConstraints(deviceId) });
      const track = s.getAudioTracks()[0];
      track.enabled = !this.muted;
      await this.audioSender?.replaceTrack(track);
      this.mic?.stop();
      this.mic = track;
      this.update({ microphoneId: deviceId, notice: null });
    } catch (e) {
      this.update({ notice: deviceError(e, "microphone") });
    }
  }

  /** Switches the camera mid-call (or picks the one to use when it is turned on). */
  async useCamera(deviceId: string): Promise<void> {
    this.update({ cameraId: deviceId });
    if (!this.cam) return;
    try {
      const s = await navigator.mediaDevices.getUserMedia({ video: this.videoConstraints(deviceId) });
      this.cam.stop();
      this.cam = s.getVideoTracks()[0] ?? null;
      this.update({ notice: null });
      await this.sendVideo();
    } catch (e) {
      this.update({ notice: deviceError(e, "camera") });
    }
  }

  /** Packets sent and received so far, by kind (for diagnostics). */
  async stats(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    if (!this.pc) return out;
    (await this.pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp") out[`in_${r.kind}_packets`] = r.packetsReceived;
      if (r.type === "outbound-rtp") out[`out_${r.kind}_packets`] = r.packetsSent;
    });
    return out;
  }
}

/**
 * Where the webview has WebRTC: tells the shell so (calls then run here),
 * and passes the core's media requests to a [`CallMedia`]. Returns it, or
 * null where calls run on the native engine.
 */
export async function connectCallMedia(
  changed: (view: MediaView) => void,
  processing = true,
): Promise<{ media: CallMedia | null; caps: { audio: boolean; video: boolean } }> {
  const available = hasWebRTC();
  const media = available
    ? new CallMedia(async (call, event) => {
        const r = await commands.reportCallMedia(call, event);
        if (r.status === "error") throw new Error(r.error.message);
      }, changed, processing)
    : null;
  if (media) await events.webviewMedia.listen((e) => void media.handle(e.payload));
  const caps = await commands.callCapabilities(available);
  return { media, caps: caps.status === "ok" ? caps.data : { audio: false, video: false } };
}
