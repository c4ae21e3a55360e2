// Files and search in the real app: an image attached in one instance
// shows as a thumbnail in the other (screenshot), opens full size in a
// lightbox that Escape closes; a word from a caption is found with the
// search box and opens its conversation at that message.
//
// Run with: xvfb-run -a node --test tests/app/files.test.mjs

import { test } from "node:test";
import assert from "node:assert/strict";
import { KEY } from "./webdriver.mjs";
import { cleanup, cli, openRow, screenshotPrefix, signIn, snap, startInstance, startServer, texts } from "./harness.mjs";

screenshotPrefix("files-");

test("an image sent from one instance is a thumbnail in the other, opens full size, and its caption is searchable", async () => {
  const server = await startServer();
  cleanup.push(() => server.proc.kill());
  cli("alice", server.url, "register", "alice");
  cli("bob", server.url, "register", "bob");
  const conv = cli("alice", server.url, "dm", "bob");
  cli("alice", server.url, "send", conv, "a photo is coming");

  const A = await startInstance("alice", 4484);
  const B = await startInstance("bob", 4494);
  await signIn(A.d, server.url, "alice");
  await signIn(B.d, server.url, "bob");
  await openRow(A.d, "bob");
  await openRow(B.d, "alice");
  await B.d.until("bob sees the first message", async () => (await texts(B.d)).includes("a photo is coming"));

  // Alice picks an 800×600 picture through the attach button's file input,
  // with a caption typed first.
  await A.d.type("[data-testid=composer]", "sunset over the bay");
  await A.d.js(`
    const c = document.createElement('canvas'); c.width = 800; c.height = 600;
    const g = c.getContext('2d');
    const grad = g.createLinearGradient(0, 0, 0, 600);
    grad.addColorStop(0, '#ff7a18'); grad.addColorStop(1, '#3a1c71');
    g.fillStyle = grad; g.fillRect(0, 0, 800, 600);
    g.fillStyle = '#ffd200'; g.beginPath(); g.arc(400, 380, 90, 0, Math.PI * 2); g.fill();
    c.toBlob((blob) => {
      const dt = new DataTransfer();
      dt.items.add(new File([blob], 'sunset.png', { type: 'image/png' }));
      const input = document.querySelector('[data-testid=attach-input]');
      input.files = dt.files;
      // As a browser fires it: bubbling (the UI listens at its root).
      input.dispatchEvent(new Event('change', { bubbles: true }));
    }, 'image/png');
  `);

  await A.d.until("alice's message is sent", async () =>
    A.d.js("const own = [...document.querySelectorAll('.msg.own')]; const m = own[own.length - 1]; return !!m && m.dataset.status !== 'queued' && !!m.querySelector('[data-testid=attachments]')"),
    60000,
  );
  await snap(A.d, "alice-sent-image");

  // Bob sees a thumbnail: an image that loaded, no bigger than 320 px.
  const thumb = () =>
    B.d.js("const i = document.querySelector('[data-testid=thumbnail] img'); return i && i.complete ? [i.naturalWidth, i.naturalHeight] : null");
  await B.d.until("bob's thumbnail loaded", async () => {
    const t = await thumb();
    return t && t[0] > 0;
  }, 60000);
  const [tw, th] = await thumb();
  assert.equal(tw, 320, `thumbnail width ${tw}`);
  assert.equal(th, 240, `thumbnail height ${th}`);
  assert.ok((await texts(B.d)).includes("sunset over the bay"));
  await snap(B.d, "bob-sees-thumbnail");

  // A click opens it full size; Escape closes it.
  await B.d.click("[data-testid=thumbnail]");
  await B.d.until("full size loaded", () =>
    B.d.js("const i = document.querySelector('[data-testid=lightbox-image]'); return !!i && i.complete && i.naturalWidth === 800 && i.naturalHeight === 600"),
  );
  await snap(B.d, "bob-lightbox");
  await B.d.type("[data-testid=lightbox-close]", KEY.escape);
  await B.d.until("lightbox closed", async () => !(await B.d.js("return !!document.querySelector('[data-testid=lightbox]')")));

  // Search: the caption's word, from the list's search box.
  for (let i = 0; i < 30; i++) cli("alice", server.url, "send", conv, `filler message ${i}`);
  await B.d.until("fillers arrived", async () => (await texts(B.d)).includes("filler message 29"));
  await B.d.type("[data-testid=search]", "sunset");
  await B.d.until("a hit", async () =>
    (await B.d.js("return [...document.querySelectorAll('[data-testid=search-hit]')].map(h => h.textContent)")).some((t) => t.includes("sunset")),
  );
  const marked = await B.d.js("return [...document.querySelectorAll('[data-testid=search-hit] mark')].map(m => m.textContent)");
  assert.deepEqual(marked, ["sunset"]);
  await snap(B.d, "bob-search");
  await B.d.click("[data-testid=search-hit]");
  await B.d.until("opened at the message, marked", () =>
    B.d.js("const m = document.querySelector('.msg.highlight'); return !!m && m.textContent.includes('sunset over the bay')"),
  );
  await snap(B.d, "bob-opened-hit");

  // Phone width: the conversation alone, with its thumbnail and the
  // attach button inside the window, nothing wider than it.
  await B.d.cmd("POST", "/window/rect", { width: 390, height: 800 });
  await B.d.until("phone width", () => B.d.js("return window.innerWidth <= 420"));
  const phone = await B.d.js(`
    const shown = (el) => !!el && getComputedStyle(el).display !== 'none' && el.getBoundingClientRect().width > 0;
    const right = (css) => { const el = document.querySelector(css); return shown(el) ? el.getBoundingClientRect().right : null; };
    return {
      width: window.innerWidth,
      overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
      sidebar: shown(document.querySelector('.sidebar')),
      thumb: right('[data-testid=thumbnail]'),
      attach: right('[data-testid=attach]'),
    };`);
  assert.equal(phone.sidebar, false, "the list gives way to the conversation");
  assert.ok(phone.overflow <= 0, `nothing wider than the window: ${JSON.stringify(phone)}`);
  assert.ok(phone.thumb !== null && phone.thumb <= phone.width, `thumbnail inside: ${JSON.stringify(phone)}`);
  assert.ok(phone.attach !== null && phone.attach <= phone.width, `attach button inside: ${JSON.stringify(phone)}`);
  await snap(B.d, "bob-phone-width");
});
