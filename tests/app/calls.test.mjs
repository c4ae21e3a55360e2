// Calls in the real app, against a `confab` CLI peer through the real
// server. The app's sound goes through a PulseAudio of this test's own:
// its microphone is a null sink fed a 440 Hz tone, its speaker a null sink
// whose monitor is recorded, so the test hears the ringtone and the peer's
// 660 Hz tone, and the peer records what the app's microphone sent.
//
// Needs a network namespace with only loopback (scripts/test runs the app
// tests in one), like every call test.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { BIN, PASSWORD, cleanup, cli, openRow, screenshotPrefix, signIn, snap, startInstance, startServer, tmp } from "./harness.mjs";

screenshotPrefix("calls-");
const RATE = 48000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A sine tone as a 48 kHz mono 16-bit WAV at half scale. */
function writeTone(file, hz, seconds) {
  const n = Math.round(RATE * seconds);
  const b = Buffer.alloc(44 + n * 2);
  b.write("RIFF", 0); b.writeUInt32LE(36 + n * 2, 4); b.write("WAVE", 8);
  b.write("fmt ", 12); b.writeUInt32LE(16, 16); b.writeUInt16LE(1, 20); b.writeUInt16LE(1, 22);
  b.writeUInt32LE(RATE, 24); b.writeUInt32LE(RATE * 2, 28); b.writeUInt16LE(2, 32); b.writeUInt16LE(16, 34);
  b.write("data", 36); b.writeUInt32LE(n * 2, 40);
  for (let i = 0; i < n; i++) b.writeInt16LE(Math.round(16383 * Math.sin((2 * Math.PI * hz * i) / RATE)), 44 + i * 2);
  fs.writeFileSync(file, b);
}

/** The samples of a 16-bit mono WAV (its `data` chunk), as floats. */
function readWav(file) {
  const b = fs.readFileSync(file);
  let at = 12;
  while (at + 8 <= b.length) {
    const id = b.toString("ascii", at, at + 4);
    const size = b.readUInt32LE(at + 4);
    if (id === "data") return raw(b.subarray(at + 8, Math.min(b.length, at + 8 + size)));
    at += 8 + size;
  }
  throw new Error(`${file}: no data chunk`);
}

const raw = (b) => Float64Array.from({ length: b.length >> 1 }, (_, i) => b.readInt16LE(i * 2) / 32768);

/** Amplitude of `hz` in `x` (Goertzel). */
function level(x, hz) {
  const k = (2 * Math.cos((2 * Math.PI * hz) / RATE));
  let s1 = 0, s2 = 0;
  for (const v of x) {
    const s0 = v + k * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  return (2 * Math.sqrt(Math.max(0, s1 * s1 + s2 * s2 - k * s1 * s2))) / x.length;
}

/** The loudest 100 ms window's amplitude of `hz`. */
function peak(x, hz) {
  let best = 0;
  for (let i = 0; i + RATE / 10 <= x.length; i += RATE / 10) best = Math.max(best, level(x.subarray(i, i + RATE / 10), hz));
  return best;
}

/** The share of 100 ms windows in which `want` is clearly there, and louder than `other`. */
function shareHearing(x, want, other) {
  const w = RATE / 10;
  let good = 0, all = 0;
  for (let i = 0; i + w <= x.length; i += w, all++) {
    const part = x.subarray(i, i + w);
    const a = level(part, want);
    if (a > 0.05 && a > 10 * level(part, other)) good++;
  }
  return all ? good / all : 0;
}

/** A PulseAudio daemon for this test, with null sinks as speaker and microphone. */
function startPulse() {
  const dir = path.join(tmp, "pulse");
  fs.mkdirSync(dir, { recursive: true });
  const server = `unix:${path.join(dir, "native")}`;
  const daemon = spawn("pulseaudio", [
    "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "--disable-shm=yes", "--use-pid-file=no",
    "-L", "module-native-protocol-unix",
    "-L", "module-null-sink sink_name=speaker rate=48000 channels=1",
    "-L", "module-null-sink sink_name=mic rate=48000 channels=1",
  ], { env: { ...process.env, PULSE_RUNTIME_PATH: dir, HOME: tmp }, stdio: "ignore" });
  cleanup.push(() => daemon.kill());
  const env = { ...process.env, PULSE_SERVER: server };
  const heard = [];
  const pactl = (...args) => execFileSync("pactl", args, { env, stdio: "ignore" });
  return {
    server,
    async ready() {
      for (let i = 0; i < 100; i++) {
        try {
          pactl("info");
          pactl("set-default-sink", "speaker");
          pactl("set-default-source", "mic.monitor");
          return;
        } catch {
          await sleep(100);
        }
      }
      throw new Error("pulseaudio did not start");
    },
    /** Plays `wav` into the microphone, and starts recording the speaker. */
    playIntoMic(wav, silence) {
      const play = spawn("paplay", ["--device=mic", wav], { env, stdio: "ignore" });
      // Silence keeps the speaker running, so its monitor always delivers.
      const keep = spawn("paplay", ["--device=speaker", silence], { env, stdio: "ignore" });
      // One recorder for the whole test: PulseAudio starts a new capture
      // stream late, so each look at the speaker takes what arrived then.
      const rec = spawn("parec", ["--device=speaker.monitor", "--format=s16le", "--rate=48000", "--channels=1", "--raw", "--latency-msec=20"], { env, stdio: ["ignore", "pipe", "ignore"] });
      rec.stdout.on("data", (c) => heard.push([Date.now(), c]));
      cleanup.push(() => { play.kill(); keep.kill(); rec.kill(); });
    },
    /** What the speaker plays during the next `ms`. */
    async listen(ms) {
      const from = Date.now();
      await sleep(ms);
      return raw(Buffer.concat(heard.filter(([t]) => t >= from).map(([, c]) => c)));
    },
  };
}

/** A CLI call; resolves with its JSON lines once it exits. */
function cliCall(user, url, args, env = {}) {
  const proc = spawn(BIN("confab"), ["--profile", path.join(tmp, `cli-${user}`), "--server", url, ...args, "--json"], {
    env: { ...process.env, CONFAB_PASSWORD: PASSWORD, CONFAB_MEDIA_BIND: "127.0.0.1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "", err = "";
  proc.stdout.on("data", (d) => (out += d));
  proc.stderr.on("data", (d) => (err += d));
  cleanup.push(() => proc.kill("SIGKILL"));
  return new Promise((resolve) => proc.on("exit", (code) => {
    const lines = out.split("\n").filter(Boolean).map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter(Boolean);
    resolve({ code, lines, log: `${out}\n${err}` });
  }));
}

const phaseOf = (d) => d.js("return document.querySelector('[data-testid=call-screen]')?.dataset.phase ?? null");
const textOf = (d, id) => d.js(`return document.querySelector('[data-testid=${id}]')?.textContent?.trim() ?? null`);

test("calls in the real app: it rings with a ringtone, is answered, carries sound both ways, declines, misses, calls out, and leaves its entries", async () => {
  const pulse = startPulse();
  await pulse.ready();
  const server = await startServer(0, ["--call-ring-seconds", "6"]);
  cleanup.push(() => server.proc.kill());
  cli("alice", server.url, "register", "alice");
  cli("bob", server.url, "register", "bob");
  const conv = cli("alice", server.url, "dm", "bob");
  cli("alice", server.url, "send", conv, "calling you in a sec");
  const mic = path.join(tmp, "mic-440.wav");
  const aliceTone = path.join(tmp, "alice-660.wav");
  const aliceHeard = path.join(tmp, "alice-heard.wav");
  writeTone(mic, 440, 120);
  writeTone(aliceTone, 660, 30);
  const silence = path.join(tmp, "silence.wav");
  writeTone(silence, 0, 120);
  pulse.playIntoMic(mic, silence);

  const B = await startInstance("bob", 4474, { PULSE_SERVER: pulse.server, CONFAB_MEDIA_BIND: "127.0.0.1" });
  await signIn(B.d, server.url, "bob");
  await openRow(B.d, "alice");
  await B.d.until("the voice call button", () => B.d.find("[data-testid=call-voice]"));
  // Video needs the webview's WebRTC, which WebKitGTK lacks: offered, but off.
  assert.equal(await B.d.js("return document.querySelector('[data-testid=call-video]').disabled"), true);

  // Alice calls; the app rings.
  const call = cliCall("alice", server.url, ["call", "bob", "--for", "16s", "--play", aliceTone, "--record", aliceHeard]);
  await B.d.until("the incoming call screen", async () => (await phaseOf(B.d)) === "ringing", 30000);
  assert.equal(await textOf(B.d, "call-peer"), "alice");
  assert.equal(await textOf(B.d, "call-status"), "Incoming voice call");
  // The ringtone (400 + 450 Hz bursts) comes out of the speaker.
  const ringing = await pulse.listen(2500);
  await snap(B.d, "incoming-call");
  assert.ok(peak(ringing, 450) > 0.1, `the ringtone plays (450 Hz at ${peak(ringing, 450).toFixed(3)})`);

  await B.d.click("[data-testid=call-accept]");
  await B.d.until("in the call", async () => (await phaseOf(B.d)) === "active", 20000);
  const first = await textOf(B.d, "call-timer");
  // Meanwhile the app plays alice's tone, and no more ringing.
  await sleep(500);
  const inCall = await pulse.listen(3000);
  const later = await textOf(B.d, "call-timer");
  assert.match(first, /^0:0\d$/);
  assert.notEqual(first, later, `the timer runs (${first} → ${later})`);
  await snap(B.d, "in-call");
  // Mute toggles; the call folds into a bar and comes back in one click.
  await B.d.click("[data-testid=call-mute]");
  await B.d.until("muted", async () => (await B.d.js("return document.querySelector('[data-testid=call-mute]').getAttribute('aria-pressed')")) === "true");
  await B.d.click("[data-testid=call-mute]");
  await B.d.until("unmuted", async () => (await B.d.js("return document.querySelector('[data-testid=call-mute]').getAttribute('aria-pressed')")) === "false");
  await B.d.click("[data-testid=call-minimize]");
  await B.d.until("the call bar", () => B.d.find("[data-testid=call-bar]"));
  assert.equal(await phaseOf(B.d), null, "the call screen is folded away");
  await snap(B.d, "call-bar");
  await B.d.click("[data-testid=call-bar]");
  await B.d.until("back in the call", async () => (await phaseOf(B.d)) === "active");
  // The microphone switches mid-call: to ALSA's null device (silence),
  // then back to the system default.
  await B.d.click("[data-testid=call-devices]");
  await B.d.until("the sound devices", async () => (await B.d.js("return document.querySelectorAll('[data-testid=setting-microphone] option').length")) > 1);
  await snap(B.d, "call-devices");
  const chooseMic = (label) =>
    B.d.js(
      `const s = document.querySelector('[data-testid=setting-microphone]');
       const o = [...s.options].find((o) => o.text.startsWith(arguments[0]));
       if (!o) return null;
       s.value = o.value;
       s.dispatchEvent(new Event('change', { bubbles: true }));
       return o.text;`,
      label,
    );
  assert.ok(await chooseMic("Discard all samples"), "ALSA's null device is listed");
  await sleep(2000);
  assert.equal(await chooseMic("System default"), "System default");
  await sleep(2500);
  assert.equal(await B.d.js("return document.querySelector('[data-testid=sound-devices] .error')?.textContent ?? null"), null);

  // Alice hangs up after 16 s; the app says so, then shows the entry.
  const result = await call;
  assert.equal(result.code, 0, result.log);
  await B.d.until("the call ended", async () => (await phaseOf(B.d)) === "ended" || (await phaseOf(B.d)) === null, 10000);
  await B.d.until("the call entry", async () => /^📞 Voice call · 0:1[4-8]/.test((await textOf(B.d, "call-entry")) ?? ""), 10000);
  await snap(B.d, "call-entry");

  // Sound both ways: the app played alice's tone, not the ringtone …
  assert.ok(inCall.length > 2 * RATE, `recorded ${inCall.length / RATE} s of the speaker`);
  assert.ok(shareHearing(inCall, 660, 450) > 0.8, `the app's speaker played alice's 660 Hz (${shareHearing(inCall, 660, 450).toFixed(2)})`);
  // … and alice heard the app's microphone (PulseAudio starts a process's
  // first capture ~1.5 s late, so skip two seconds).
  const heard = readWav(aliceHeard).subarray(2 * RATE);
  assert.ok(heard.length > 8 * RATE, `alice recorded ${heard.length / RATE} s`);
  // In 100 ms windows: the app's 440 Hz, then the null microphone's
  // silence (two seconds, and up to two more while PulseAudio starts the
  // default microphone's new capture), then 440 Hz again.
  const windows = [];
  for (let i = 0; i + RATE / 10 <= heard.length; i += RATE / 10) windows.push(heard.subarray(i, i + RATE / 10));
  const map = windows.map((w) => (peak(w, 440) > 0.05 && peak(w, 440) > 10 * peak(w, 660) ? "#" : peak(w, 660) > 0.05 ? "x" : ".")).join("");
  const gap = /#{10,}(\.{15,45})#{10,}/.exec(map);
  assert.ok(gap, `alice heard the app's 440 Hz, a gap while the null microphone was chosen, and 440 Hz again: ${map}`);
  const voiced = map.replace(gap[1], "");
  assert.ok(voiced.split("").filter((c) => c === "#").length / voiced.length > 0.8, `alice heard the app's 440 Hz microphone: ${map}`);
  const summary = result.lines.find((l) => l.type === "call_summary");
  assert.equal(summary?.reason, "ended_here", result.log);

  // With the window away, a call is announced by a notification (its
  // click shows the window; without a window manager the test restores
  // the window itself). Declining stops the ringtone, and the caller hears
  // "declined".
  await B.d.until("the ended call's screen goes", async () => (await phaseOf(B.d)) === null, 10000);
  await B.d.cmd("POST", "/window/minimize", {});
  await sleep(800);
  B.closeNotifications();
  const declined = cliCall("alice", server.url, ["call", "bob", "--for", "30s", "--silent", "--record", path.join(tmp, "ignored.wav")]);
  await B.d.until("an incoming-call notification", async () => B.notifications().includes("Incoming voice call"), 30000);
  B.clickNotification();
  await B.d.cmd("POST", "/window/rect", { x: 0, y: 0, width: 1040, height: 720 });
  await B.d.until("ringing again", async () => (await phaseOf(B.d)) === "ringing", 30000);
  await sleep(1200);
  await B.d.click("[data-testid=call-decline]");
  const d = await declined;
  assert.equal(d.lines.find((l) => l.type === "call_summary")?.reason, "declined", d.log);
  const afterDecline = await pulse.listen(2000);
  assert.ok(afterDecline.length > RATE, `recorded ${afterDecline.length / RATE} s of the speaker`);
  assert.ok(peak(afterDecline, 450) < 0.02, `the ringtone stopped (450 Hz at ${peak(afterDecline, 450).toFixed(3)})`);

  // A call nobody answers, while another conversation is open and sound is
  // off: the screen shows it but nothing rings; then it is missed, with a
  // notification and a red entry.
  cli("carol", server.url, "register", "carol");
  cli("carol", server.url, "send", cli("carol", server.url, "dm", "bob"), "hi from carol");
  await B.d.until("the declined call's screen goes", async () => (await phaseOf(B.d)) === null, 10000);
  await openRow(B.d, "carol");
  await B.d.click("[data-testid=settings-toggle]");
  await B.d.click("[data-testid=setting-sound]");
  await B.d.until("sound off", async () => !(await B.d.js("return document.querySelector('[data-testid=setting-sound]').checked")));
  await B.d.click("[data-testid=settings-toggle]");
  B.closeNotifications();
  const missed = cliCall("alice", server.url, ["call", "bob", "--for", "30s", "--silent", "--record", path.join(tmp, "ignored.wav")]);
  await B.d.until("ringing a third time", async () => (await phaseOf(B.d)) === "ringing", 30000);
  const silent = await pulse.listen(2000);
  assert.ok(silent.length > RATE, `recorded ${silent.length / RATE} s of the speaker`);
  assert.ok(peak(silent, 450) < 0.02, `no ringtone with sound off (450 Hz at ${peak(silent, 450).toFixed(3)})`);
  await B.d.until("the screen says missed", async () => (await textOf(B.d, "call-ended")) === "Missed call", 15000);
  const m = await missed;
  assert.equal(m.lines.find((l) => l.type === "call_summary")?.reason, "missed", m.log);
  await B.d.until("a missed-call notification", async () => B.notifications().includes("Missed voice call"), 20000);
  await B.d.until("the ended call's screen goes", async () => (await phaseOf(B.d)) === null, 10000);
  await openRow(B.d, "alice");
  await B.d.until("the missed entry", async () => {
    const entries = await B.d.js("return [...document.querySelectorAll('[data-testid=call-entry]')].map(e => [e.textContent, e.classList.contains('missed')])");
    return entries.some(([t, red]) => t.includes("Missed voice call") && red);
  }, 10000);
  await snap(B.d, "missed-call-entry");

  // Calling out, the app plays ringback (the ring's cadence, quieter)
  // until the call is answered or, here, cancelled.
  await B.d.click("[data-testid=call-voice]");
  await B.d.until("calling", async () => (await phaseOf(B.d)) === "calling", 10000);
  const ringback = await pulse.listen(2500);
  await B.d.click("[data-testid=call-hangup]");
  await B.d.until("cancelled", async () => ["ended", null].includes(await phaseOf(B.d)), 10000);
  await sleep(300);
  const afterCancel = await pulse.listen(1500);
  const rb = peak(ringback, 450);
  assert.ok(rb > 0.02 && rb < peak(ringing, 450) / 2, `ringback plays, quieter than the ring (450 Hz at ${rb.toFixed(3)}, the ring at ${peak(ringing, 450).toFixed(3)})`);
  assert.ok(peak(afterCancel, 450) < 0.01, `ringback stopped (450 Hz at ${peak(afterCancel, 450).toFixed(3)})`);
  await B.d.until("the cancelled call's screen goes", async () => (await phaseOf(B.d)) === null, 10000);

  // The app calls out and hangs up.
  const answer = cliCall("alice", server.url, ["answer", "--wait", "30s", "--silent", "--record", path.join(tmp, "alice-2.wav")]);
  await sleep(1000);
  await B.d.click("[data-testid=call-voice]");
  await B.d.until("calling", async () => ["calling", "connecting", "active"].includes(await phaseOf(B.d)), 10000);
  await B.d.until("alice answered", async () => (await phaseOf(B.d)) === "active", 30000);
  await sleep(1500);
  await B.d.click("[data-testid=call-hangup]");
  const a = await answer;
  assert.equal(a.lines.find((l) => l.type === "call_summary")?.reason, "hung_up", a.log);
  await B.d.until("the outgoing call's entry", async () => {
    const entries = await B.d.js("return [...document.querySelectorAll('[data-testid=call-entry]')].map(e => e.textContent)");
    return entries.filter((t) => /Voice call · \d+:\d\d/.test(t)).length === 2;
  }, 10000);
});
