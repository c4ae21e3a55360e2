// SwiftPM builds a C target only if it has a source file; the module's
// content is its header (include/confab_push.h).
#include "confab_push.h"
