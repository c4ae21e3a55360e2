// End-to-end in the real app: two Confab instances (separate data dirs and
// D-Bus sessions) driven over WebDriver (tauri-driver + WebKitWebDriver)
// under Xvfb, against a real confab-server. Screenshots of each step go to
// test-artifacts/app/ for review.
//
// Run with: xvfb-run -a node --test tests/app/

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Driver, KEY } from "./webdriver.mjs";

const root = path.resolve(import.meta.dirname, "../..");
const binDir = process.env.CONFAB_BIN_DIR ?? path.join(process.env.CARGO_TARGET_DIR ?? path.join(root, "target"), "debug");
const BIN = (name) => path.join(binDir, name);
const artifacts = path.join(root, "test-artifacts", "app");
fs.mkdirSync(artifacts, { recursive: true });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "confab-app-e2e-"));
const PASSWORD = "correct horse battery";
const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

function startServer(port = 0) {
  return new Promise((resolve, reject) => {
    const proc = spawn(BIN("confab-server"), ["--listen", `127.0.0.1:${port}`, "--db", path.join(tmp, "server.db")], {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, RUST_LOG: "warn" },
    });
    let out = "";
    proc.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/[\d.]+:(\d+))/);
      if (m) resolve({ proc, url: m[1], port: Number(m[2]) });
    });
    proc.on("exit", (code) => reject(new Error(`server exited with ${code}`)));
  });
}

function cli(user, url, ...args) {
  return execFileSync(BIN("confab"), ["--profile", path.join(tmp, `cli-${user}`), "--server", url, ...args], {
    env: { ...process.env, CONFAB_PASSWORD: PASSWORD },
  }).toString().trim();
}

async function startInstance(name, port) {
  const data = path.join(tmp, name);
  fs.mkdirSync(data, { recursive: true });
  // Each instance gets its own D-Bus session: single-instance and
  // notifications are per session, and we watch this one's notifications.
  const [address, pid] = execFileSync("dbus-daemon", ["--session", "--fork", "--print-address=1", "--print-pid=1"])
    .toString().trim().split("\n");
  cleanup.push(() => { try { process.kill(Number(pid)); } catch {} });
  const runtime = path.join(data, "run");
  fs.mkdirSync(runtime, { recursive: true, mode: 0o700 });
  const env = {
    ...process.env,
    DBUS_SESSION_BUS_ADDRESS: address,
    XDG_DATA_HOME: path.join(data, "data"),
    XDG_CONFIG_HOME: path.join(data, "config"),
    XDG_CACHE_HOME: path.join(data, "cache"),
    XDG_RUNTIME_DIR: runtime,
    CONFAB_LOG: "warn",
  };
  // A keychain (the Secret Service) in this session, unlocked.
  execFileSync("gnome-keyring-daemon", ["--unlock", "--components=secrets"], { env, input: "test-keyring" });
  // A notification server, so notifications can be clicked (dunstctl).
  const dunst = spawn("dunst", [], { env, stdio: "ignore" });
  cleanup.push(() => dunst.kill());
  let notifications = "";
  const monitor = spawn("dbus-monitor", ["--address", address, "interface='org.freedesktop.Notifications'"], { env });
  monitor.stdout.on("data", (d) => (notifications += d));
  cleanup.push(() => monitor.kill());
  const driverProc = spawn("tauri-driver", ["--port", String(port), "--native-port", String(port + 1)], {
    env,
    stdio: "ignore",
  });
  cleanup.push(() => driverProc.kill());
  const d = new Driver(`http://127.0.0.1:${port}`);
  await d.until("tauri-driver", async () => (await fetch(`http://127.0.0.1:${port}/status`)).ok, 20000);
  await d.start(BIN("confab-app"));
  cleanup.push(() => d.quit());
  const secrets = () => {
    try {
      return execFileSync("secret-tool", ["search", "--all", "service", "app.confab.desktop"], { env, stdio: ["ignore", "pipe", "ignore"] }).toString();
    } catch {
      return "";
    }
  };
  const profileFiles = () => {
    const dir = path.join(env.XDG_DATA_HOME, "app.confab.desktop", "profile");
    return fs.existsSync(dir) ? fs.readdirSync(dir).map((f) => fs.readFileSync(path.join(dir, f))) : [];
  };
  // With one notification on screen, position 0 is that one.
  const clickNotification = () => execFileSync("dunstctl", ["action", "0"], { env });
  const closeNotifications = () => execFileSync("dunstctl", ["close-all"], { env });
  return { d, notifications: () => notifications, secrets, profileFiles, clickNotification, closeNotifications };
}

let shot = 0;
async function snap(d, label) {
  // Let the page settle: screenshots can lag a repaint.
  await new Promise((r) => setTimeout(r, 400));
  fs.writeFileSync(path.join(artifacts, `${String(++shot).padStart(2, "0")}-${label}.png`), await d.screenshot());
}

async function signIn(d, url, username) {
  await d.until("sign-in form", () => d.find("input[name=server]"));
  await d.clear("input[name=server]");
  await d.type("input[name=server]", url);
  await d.type("input[name=username]", username);
  await d.type("input[name=password]", PASSWORD);
  await d.click("[data-testid=signin-submit]");
  await d.until(`${username} signed in`, () => d.find("[data-testid=new-direct]"));
}

const texts = (d) => d.js("return [...document.querySelectorAll('[data-testid=message-text]')].map(e => e.textContent)");
const lastOwnStatus = (d) =>
  d.js("const own = [...document.querySelectorAll('.msg.own')]; return own.length ? own[own.length - 1].dataset.status : null");

/** Clicks the conversation whose row mentions `name`, once it is listed. */
async function openRow(d, name) {
  await d.until(`${name} listed`, () =>
    d.js("const r = [...document.querySelectorAll('[data-testid=conversation-row]')].find(r => r.textContent.includes(arguments[0])); if (r) { r.click(); return true; } return false;", name),
  );
}

async function send(d, text) {
  await d.type("[data-testid=composer]", text);
  await d.type("[data-testid=composer]", KEY.enter);
}

test("two people chat in the real app: messages, ticks, edits, reactions, offline queue, notifications", async () => {
  let server = await startServer();
  cleanup.push(() => server.proc.kill());
  cli("alice", server.url, "register", "alice");
  cli("bob", server.url, "register", "bob");
  cli("carol", server.url, "register", "carol");
  const other = cli("carol", server.url, "dm", "bob");
  cli("carol", server.url, "send", other, "hi bob, carol here");

  const A = await startInstance("alice", 4444);
  const B = await startInstance("bob", 4454);
  await signIn(A.d, server.url, "alice");
  await signIn(B.d, server.url, "bob");
  await snap(A.d, "alice-signed-in");

  // The session token is in the keychain, not in the profile.
  const token = A.secrets().match(/^secret = (.+)$/m)?.[1];
  assert.ok(token && token.length > 20, `a token in the keychain: ${A.secrets()}`);
  assert.ok(!A.profileFiles().some((b) => b.includes(token)), "the token is not in the profile");

  // A opens a chat with bob and sends.
  await A.d.click("[data-testid=new-direct]");
  await A.d.type("[data-testid=new-direct-username]", "bob" + KEY.enter);
  await A.d.until("conversation open", async () => (await A.d.js("return document.querySelector('[data-testid=conversation-title]')?.textContent")) === "bob");
  await send(A.d, "hello bob");
  await A.d.until("alice's message shown", async () => (await texts(A.d)).includes("hello bob"));
  await snap(A.d, "alice-sent");

  // B sees it arrive and opens the conversation.
  await B.d.until("bob's list shows alice", async () => (await B.d.js("return [...document.querySelectorAll('[data-testid=conversation-row] .title')].map(e => e.textContent)")).includes("alice"));
  await snap(B.d, "bob-list-with-unread");
  await openRow(B.d, "alice");
  await B.d.until("bob sees hello", async () => (await texts(B.d)).includes("hello bob"));

  // A's tick goes to delivered, then read.
  await A.d.until("read tick", async () => (await lastOwnStatus(A.d)) === "read");
  await snap(A.d, "alice-read-ticks");

  // B replies; A sees it.
  await send(B.d, "hi alice");
  await A.d.until("alice sees the reply", async () => (await texts(A.d)).includes("hi alice"));

  // B edits the reply (Up edits your last message) and reacts to A's.
  await B.d.type("[data-testid=composer]", KEY.up);
  await B.d.until("editing", () => B.d.find(".editing"));
  await B.d.js("const t = document.querySelector('[data-testid=composer]'); t.value=''; t.dispatchEvent(new Event('input'))");
  await send(B.d, "hi alice (fixed)");
  await A.d.until("alice sees the edit", async () => (await texts(A.d)).includes("hi alice (fixed)"));
  await B.d.js("[...document.querySelectorAll('.msg')].find(m => m.textContent.includes('hello bob')).querySelector('[data-testid=message-menu]').click()");
  await B.d.until("message menu", () => B.d.find(".menu .quick button"));
  await B.d.js("document.querySelector('.menu .quick button').click()");
  await A.d.until("alice sees the reaction", async () => await A.d.js("return !!document.querySelector('[data-testid=reactions]')"));
  await snap(A.d, "alice-edit-and-reaction");
  await snap(B.d, "bob-conversation");

  // The server goes away: A sees the banner; a message typed now waits…
  const port = server.port;
  server.proc.kill("SIGKILL");
  await A.d.until("offline banner", () => A.d.find("[data-testid=offline-banner]"), 60000);
  await send(A.d, "sent while offline");
  await A.d.until("queued", async () => (await lastOwnStatus(A.d)) === "queued");
  await snap(A.d, "alice-offline-queued");
  // …and goes out once the server is back.
  server = await startServer(port);
  cleanup.push(() => server.proc.kill());
  await B.d.until("bob gets the queued message", async () => (await texts(B.d)).includes("sent while offline"), 60000);
  await A.d.until("alice's banner gone", async () => !(await A.d.js("return !!document.querySelector('[data-testid=offline-banner]')")), 60000);
  await snap(A.d, "alice-back-online");

  // Notifications: B looks at another conversation; A's message notifies.
  await openRow(B.d, "carol");
  await B.d.until("carol's chat open", async () => (await B.d.js("return document.querySelector('[data-testid=conversation-title]')?.textContent")) === "carol");
  B.closeNotifications();
  await send(A.d, "ping for a notification");
  await B.d.until("a notification for bob", async () => B.notifications().includes("ping for a notification"), 20000);
  assert.ok(B.notifications().includes("alice"), "titled with the sender");
  await snap(B.d, "bob-notified");
  // Clicking the notification opens its conversation.
  B.clickNotification();
  await B.d.until("the notification opened alice's chat", async () => (await B.d.js("return document.querySelector('[data-testid=conversation-title]')?.textContent")) === "alice");

  // With that conversation open but the window not focused, A's message notifies.
  await B.d.cmd("POST", "/window/minimize", {});
  await new Promise((r) => setTimeout(r, 800));
  await send(A.d, "while your window is away");
  await B.d.until("notified while unfocused", async () => B.notifications().includes("while your window is away"), 20000);
  await B.d.cmd("POST", "/window/rect", { x: 0, y: 0, width: 1040, height: 720 });

  // While B types in the conversation with A, A's messages do not notify.
  await openRow(B.d, "alice");
  await B.d.until("alice's chat open", async () => (await B.d.js("return document.querySelector('[data-testid=conversation-title]')?.textContent")) === "alice");
  await B.d.type("[data-testid=composer]", "I am typing");
  await new Promise((r) => setTimeout(r, 500));
  await send(A.d, "quiet while typing");
  await B.d.until("bob sees it", async () => (await texts(B.d)).includes("quiet while typing"));
  await new Promise((r) => setTimeout(r, 2000));
  assert.ok(!B.notifications().includes("quiet while typing"), "no notification while typing there");
  await snap(B.d, "bob-typing-no-notification");

  // Muted: B mutes the conversation with A, looks elsewhere; A's message is silent.
  await B.d.js("const t = document.querySelector('[data-testid=composer]'); t.value=''; t.dispatchEvent(new Event('input'))");
  await B.d.click("[data-testid=details-toggle]");
  await B.d.click("[data-testid=details] input[type=checkbox]");
  await B.d.until("muted saved", async () => await B.d.js("return document.querySelector('[data-testid=details] input[type=checkbox]').checked"));
  await snap(B.d, "bob-muted");
  await openRow(B.d, "carol");
  await B.d.until("carol's chat open again", async () => (await B.d.js("return document.querySelector('[data-testid=conversation-title]')?.textContent")) === "carol");
  await send(A.d, "muted message");
  await B.d.until("bob's list shows it", async () => (await B.d.js("return document.querySelector('.sidebar').textContent")).includes("muted message"));
  await new Promise((r) => setTimeout(r, 1500));
  assert.ok(!B.notifications().includes("muted message"), "no notification for a muted conversation");

  // Settings list alice's devices: this app and the CLI she registered
  // with. Signing the CLI out from here ends its session for good.
  await A.d.click("[data-testid=settings-toggle]");
  await A.d.until("two devices listed", async () => (await A.d.js("return document.querySelectorAll('[data-testid=device]').length")) === 2);
  assert.ok((await A.d.js("return document.querySelector('[data-testid=devices]').textContent")).includes("(this device)"));
  await snap(A.d, "alice-devices");
  await A.d.click("[data-testid=sign-out-device]");
  await A.d.until("one device left", async () => (await A.d.js("return document.querySelectorAll('[data-testid=device]').length")) === 1);
  assert.throws(() => cli("alice", server.url, "conversations"), (e) => /login/.test(String(e.stderr)));

  // Phone width: one pane at a time, with a way back to the list.
  await B.d.cmd("POST", "/window/rect", { width: 390, height: 760 });
  await B.d.until("narrow layout", async () => await B.d.js("return getComputedStyle(document.querySelector('.sidebar')).display === 'none'"));
  await snap(B.d, "bob-phone-width-conversation");
  await B.d.click(".back");
  await B.d.until("list shown", async () => await B.d.js("return getComputedStyle(document.querySelector('.sidebar')).display !== 'none'"));
  await snap(B.d, "bob-phone-width-list");
});

test("a long conversation opens at the newest message and keeps the DOM small while scrolling back", async () => {
  const server = await startServer();
  cleanup.push(() => server.proc.kill());
  cli("dave", server.url, "register", "dave");
  cli("erin", server.url, "register", "erin");
  const conv = cli("dave", server.url, "dm", "erin");
  const lines = Array.from({ length: 1200 }, (_, i) => `line ${i + 1}`).join("\n");
  execFileSync(BIN("confab"), ["--profile", path.join(tmp, "cli-dave"), "--server", server.url, "send", conv], {
    input: lines,
    env: { ...process.env, CONFAB_PASSWORD: PASSWORD },
  });

  const E = await startInstance("erin", 4464);
  await signIn(E.d, server.url, "erin");
  // Catching up on 1200 unread messages raises one notification, not 1200.
  await E.d.until("one summary notification", async () => E.notifications().includes("1200 new messages from dave"), 60000);
  await new Promise((r) => setTimeout(r, 1000));
  const notified = (E.notifications().match(/member=Notify\b/g) ?? []).length;
  assert.equal(notified, 1, `one notification for the catch-up:\n${E.notifications()}`);
  await E.d.until("erin's conversation listed", () => E.d.find("[data-testid=conversation-row]"));
  await E.d.click("[data-testid=conversation-row]");
  await E.d.until("newest shown", async () => (await texts(E.d)).includes("line 1200"));
  await E.d.until("newest shown", async () => (await texts(E.d)).includes("line 1200"));
  const atBottom = () =>
    E.d.js("const l = document.querySelector('[data-testid=messages]'); return l.scrollHeight - l.scrollTop - l.clientHeight < 60");
  await E.d.until("opened at the bottom", atBottom);
  await snap(E.d, "erin-long-conversation");

  // Scroll back through many pages: history keeps loading, the DOM does not grow.
  const oldestRendered = () =>
    E.d.js("return Math.min(...[...document.querySelectorAll('.msg')].map(m => Number(m.dataset.seq)))");
  await E.d.until("older pages loaded while scrolling up", async () => {
    await E.d.js("document.querySelector('[data-testid=messages]').scrollTop = 0");
    return (await oldestRendered()) < 1200 - 400;
  }, 60000);
  const rendered = await E.d.js("return document.querySelectorAll('.msg').length");
  assert.ok(rendered < 120, `only rows near the viewport are in the DOM (${rendered})`);
  await snap(E.d, "erin-scrolled-back");
});
