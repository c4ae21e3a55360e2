// The Rust core's push catch-up, for native code that runs without the
// Tauri app around it: the Notification Service Extension and the PushKit
// handler (ConfabPushPlugin). Exported (C ABI) by confab_app_lib, the app's
// static library, which the Tauri CLI copies to
// Externals/<arch>/<configuration>/libapp.a; both the app and the extension
// link it. ConfabPushPlugin's C module includes this file, and the
// extension's bridging header too: this is the one copy.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Opens the profile in `profile_dir` (the App Group container's `profile`),
// connects, syncs, flushes the outbox and says what to show for the wake-up
// `wake_json` (the push's `confab` value as JSON text:
// {"kind":"message"|"update"|"call","conversation":uuid|null,"count":n,
//  "call"?:uuid,"video"?:bool}; anything else still means "catch up").
// Blocks for at most `budget_ms`, so never call it on the main thread.
//
// Returns a malloc'd UTF-8 JSON string, to free with confab_string_free:
// {"synced":bool,"unsent":n,
//  "notices":[{"conversation":uuid,"title":"…","body":"…","sound":bool}],
//  "ringing":null|{"call":uuid,"conversation":uuid,"peer":uuid,
//                  "peer_name":"…","video":bool,"outgoing":bool,
//                  "muted":bool,"phase":{"phase":"ringing"}}}
// or {"error":{"kind":"…","message":"…"}}.
char *_Nullable confab_catch_up(const char *_Nonnull profile_dir,
                                const char *_Nonnull wake_json,
                                uint64_t budget_ms);

// Frees a string confab_catch_up returned (NULL is ignored).
void confab_string_free(char *_Nullable s);

#ifdef __cplusplus
}
#endif
