import { describe, expect, it } from "vitest";
import { linkify } from "./linkify";

describe("linkify", () => {
  it("finds links and leaves the rest as text", () => {
    expect(linkify("see https://example.com/a?b=1, ok")).toEqual([
      { kind: "text", text: "see " },
      { kind: "link", text: "https://example.com/a?b=1", href: "https://example.com/a?b=1" },
      { kind: "text", text: ", ok" },
    ]);
  });
  it("keeps markup as plain text", () => {
    expect(linkify("<img src=x onerror=alert(1)>")).toEqual([{ kind: "text", text: "<img src=x onerror=alert(1)>" }]);
  });
  it("ignores non-web schemes", () => {
    expect(linkify("javascript:alert(1) file:///etc/passwd")).toEqual([
      { kind: "text", text: "javascript:alert(1) file:///etc/passwd" },
    ]);
  });
  it("keeps a balanced closing parenthesis", () => {
    const parts = linkify("(https://en.wikipedia.org/wiki/Foo_(bar))");
    expect(parts[1]).toMatchObject({ kind: "link", href: "https://en.wikipedia.org/wiki/Foo_(bar)" });
  });
});
