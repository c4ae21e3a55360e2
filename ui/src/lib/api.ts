// The typed commands, with errors turned into exceptions carrying {kind, message}.
import { commands } from "../bindings";
import type { AppError } from "../bindings";

export class CommandError extends Error {
  kind: string;
  constructor(e: AppError) {
    super(e.message);
    this.kind = e.kind;
  }
}

type Res<T> = { status: "ok"; data: T } | { status: "error"; error: AppError };

async function call<T>(p: Promise<Res<T>>): Promise<T> {
  const r = await p;
  if (r.status === "error") throw new CommandError(r.error);
  return r.data;
}

type Commands = typeof commands;
type Unwrapped = {
  [K in keyof Commands]: (...args: Parameters<Commands[K]>) => Promise<
    Awaited<ReturnType<Commands[K]>> extends Res<infer T> ? T : never
  >;
};

export const api = new Proxy({} as Unwrapped, {
  get(_t, name: string) {
    return (...args: unknown[]) => call((commands as any)[name](...args));
  },
});

export function errorText(e: unknown): string {
  if (e instanceof CommandError) {
    if (e.kind === "offline") return "Can't reach the server. Check the address and your connection.";
    if (e.kind === "invalid_credentials") return "Wrong username or password.";
    return e.message;
  }
  return String(e);
}
