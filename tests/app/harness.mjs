// The real-app harness: a confab-server, CLI peers, and Confab instances
// (each with its own data dirs, D-Bus session, keychain and notification
// server) driven over WebDriver (tauri-driver + WebKitWebDriver).

import { after } from "node:test";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Driver, KEY } from "./webdriver.mjs";

export const root = path.resolve(import.meta.dirname, "../..");
export const binDir = process.env.CONFAB_BIN_DIR ?? path.join(process.env.CARGO_TARGET_DIR ?? path.join(root, "target"), "debug");
export const BIN = (name) => path.join(binDir, name);
export const artifacts = path.join(root, "test-artifacts", "app");
fs.mkdirSync(artifacts, { recursive: true });
export const tmp = process.env.CONFAB_KEEP_TMP ? fs.mkdtempSync(path.join(process.env.CONFAB_KEEP_TMP, "confab-app-e2e-")) : fs.mkdtempSync(path.join(os.tmpdir(), "confab-app-e2e-"));
export const PASSWORD = "correct horse battery";
export const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

export function startServer(port = 0, extra = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn(BIN("confab-server"), ["--listen", `127.0.0.1:${port}`, "--db", path.join(tmp, "server.db"), ...extra], {
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

export function cli(user, url, ...args) {
  return execFileSync(BIN("confab"), ["--profile", path.join(tmp, `cli-${user}`), "--server", url, ...args], {
    env: { ...process.env, CONFAB_PASSWORD: PASSWORD },
  }).toString().trim();
}

export async function startInstance(name, port, extraEnv = {}) {
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
    ...extraEnv,
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
  // The driver's and the app's output, for when something goes wrong.
  const log = fs.openSync(path.join(data, "app.log"), "w");
  const driverProc = spawn("tauri-driver", ["--port", String(port), "--native-port", String(port + 1)], {
    env,
    stdio: ["ignore", log, log],
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
let prefix = "";
/** Names this file's screenshots (`calls-01-…`), so files do not collide. */
export function screenshotPrefix(p) {
  prefix = p;
}
export async function snap(d, label) {
  // Let the page settle: screenshots can lag a repaint.
  await new Promise((r) => setTimeout(r, 400));
  fs.writeFileSync(path.join(artifacts, `${prefix}${String(++shot).padStart(2, "0")}-${label}.png`), await d.screenshot());
}

export async function signIn(d, url, username) {
  await d.until("sign-in form", () => d.find("input[name=server]"));
  await d.clear("input[name=server]");
  await d.type("input[name=server]", url);
  await d.type("input[name=username]", username);
  await d.type("input[name=password]", PASSWORD);
  await d.click("[data-testid=signin-submit]");
  await d.until(`${username} signed in`, () => d.find("[data-testid=new-direct]"));
}

export const texts = (d) => d.js("return [...document.querySelectorAll('[data-testid=message-text]')].map(e => e.textContent)");
export const lastOwnStatus = (d) =>
  d.js("const own = [...document.querySelectorAll('.msg.own')]; return own.length ? own[own.length - 1].dataset.status : null");

/** Clicks the conversation whose row mentions `name`, once it is listed. */
export async function openRow(d, name) {
  await d.until(`${name} listed`, () =>
    d.js("const r = [...document.querySelectorAll('[data-testid=conversation-row]')].find(r => r.textContent.includes(arguments[0])); if (r) { r.click(); return true; } return false;", name),
  );
}

export async function send(d, text) {
  await d.type("[data-testid=composer]", text);
  await d.type("[data-testid=composer]", KEY.enter);
}

