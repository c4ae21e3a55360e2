package app.confab.push

/**
 * The app's Rust library (`confab_app_lib`, the same one the webview side
 * loads), for a push handled while the app may not be running.
 */
object ConfabNative {
    init {
        System.loadLibrary("confab_app_lib")
    }

    /**
     * Catches up the profile in [profileDir] after a push whose wake-up JSON
     * is [wake] ("" when there is none), within [budgetMs]. Blocks for up to
     * [budgetMs]: never call it on the main thread.
     *
     * Returns JSON: `{"synced", "unsent", "notices": [...], "ringing"}`, or
     * `{"error": {"kind", "message"}}` (crates/mobile, `catch_up_json`).
     */
    @JvmStatic
    external fun catchUp(profileDir: String, wake: String, budgetMs: Long): String
}
