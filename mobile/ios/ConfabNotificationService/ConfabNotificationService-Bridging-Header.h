// Makes the Rust core's C entry points (libapp.a) visible to Swift.
#include "../Sources/confab-app/confab_push.h"
