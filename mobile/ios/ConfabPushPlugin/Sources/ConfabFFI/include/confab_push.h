// The `ConfabFFI` module (import ConfabFFI): the Rust core's push entry
// points, declared once in the Xcode project's Sources/confab-app/confab_push.h.
// The symbols themselves come from the app's Rust library at the final link.
#include "../../../../Sources/confab-app/confab_push.h"
