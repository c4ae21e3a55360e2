// A minimal W3C WebDriver client (fetch only), enough to drive the real app
// through tauri-driver.

const ELEMENT = "element-6066-11e4-a52e-4f735466cecf";

export class Driver {
  constructor(base) {
    this.base = base;
    this.session = null;
  }

  async cmd(method, path, body) {
    const url = `${this.base}${this.session ? `/session/${this.session}` : ""}${path}`;
    const res = await fetch(url, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json();
    if (!res.ok) throw new Error(`${method} ${path}: ${JSON.stringify(json.value ?? json)}`);
    return json.value;
  }

  async start(application, env) {
    const caps = { browserName: "wry", "tauri:options": { application, ...(env ? { env } : {}) } };
    const value = await this.cmd("POST", "/session", { capabilities: { alwaysMatch: caps } });
    this.session = value.sessionId;
  }

  async quit() {
    if (this.session) await this.cmd("DELETE", "").catch(() => {});
    this.session = null;
  }

  async find(css) {
    const v = await this.cmd("POST", "/element", { using: "css selector", value: css });
    return v[ELEMENT];
  }

  async findAll(css) {
    const v = await this.cmd("POST", "/elements", { using: "css selector", value: css });
    return v.map((e) => e[ELEMENT]);
  }

  async click(css) {
    await this.cmd("POST", `/element/${await this.find(css)}/click`, {});
  }

  async type(css, text) {
    await this.cmd("POST", `/element/${await this.find(css)}/value`, { text });
  }

  async clear(css) {
    await this.cmd("POST", `/element/${await this.find(css)}/clear`, {});
  }

  /** Runs `script` (a function body) in the page and returns its result. */
  async js(script, ...args) {
    return this.cmd("POST", "/execute/sync", { script, args });
  }

  async screenshot() {
    return Buffer.from(await this.cmd("GET", "/screenshot"), "base64");
  }

  /** Polls `check` (async, returns truthy) until it holds or times out. */
  async until(what, check, timeoutMs = 30000) {
    const deadline = Date.now() + timeoutMs;
    let last;
    while (Date.now() < deadline) {
      try {
        last = await check();
        if (last) return last;
      } catch (e) {
        last = e;
      }
      await new Promise((r) => setTimeout(r, 150));
    }
    throw new Error(`timed out waiting for ${what} (last: ${last})`);
  }
}

export const KEY = { enter: "\uE007", shift: "\uE008", escape: "\uE00C", up: "\uE013" };
