// End-to-end in the real app: two Confab instances (separate data dirs and
// D-Bus sessions) driven over WebDriver (tauri-driver + WebKitWebDriver)
// under Xvfb, against a real confab-server. Screenshots of each step go to
// test-artifacts/app/ for review.
//
// Run with: xvfb-run -a node --test tests/app/

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { KEY } from "./webdriver.mjs";
import { BIN, PASSWORD, cleanup, cli, lastOwnStatus, openRow, send, signIn, snap, startInstance, startServer, texts, tmp } from "./harness.mjs";

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
