package app.confab.push

import android.app.Activity
import android.content.Context
import android.content.SharedPreferences
import android.util.Log
import com.google.firebase.FirebaseApp
import com.google.firebase.messaging.FirebaseMessaging
import org.json.JSONObject
import org.unifiedpush.android.connector.UnifiedPush
import java.io.File

/**
 * Where this device is woken: an FCM token or a UnifiedPush endpoint, kept
 * in the SharedPreferences "confab_push" until the Rust side hands it to the
 * server. The shell reads it through [ConfabPushPlugin] (`pendingTarget`)
 * and registers it (`Client::set_push`) at start, on resume and when
 * [onTargetChanged] fires: FCM rotates tokens and distributors send new
 * endpoints.
 */
object ConfabPush {
    const val TAG = "ConfabPush"
    private const val PREFS = "confab_push"
    private const val KEY_FCM = "fcm_token"
    private const val KEY_UNIFIED_PUSH = "unified_push"
    /** Shown by some distributors next to the registration. */
    private const val DISTRIBUTOR_MESSAGE = "Confab"

    @Volatile
    private var appContext: Context? = null

    /** Set by the plugin while the app runs: the push target changed. */
    @Volatile
    var onTargetChanged: (() -> Unit)? = null

    /** Remembers the application context for [pendingTarget]. Cheap; call it early. */
    @JvmStatic
    fun init(context: Context) {
        appContext = context.applicationContext
    }

    /**
     * The account's profile directory. The app keeps it in Tauri's
     * `app_data_dir()` + "profile"; on Android `app_data_dir()` is
     * `Context.getDataDir()` (tauri's PathPlugin.getDataDir), with no
     * identifier appended.
     */
    @JvmStatic
    fun profileDir(context: Context): String = File(context.dataDir, "profile").absolutePath

    /**
     * Gets a push address: refreshes the UnifiedPush registration if the user
     * has a distributor, else asks FCM for its token, else (no
     * google-services.json in the build, or no Google Play services) tries
     * UnifiedPush.
     */
    fun start(activity: Activity) {
        val context = activity.applicationContext
        if (UnifiedPush.getAckDistributor(context) != null) {
            // Endpoints can change; registering again is how the connector
            // asks for the current one (it arrives in onNewEndpoint).
            UnifiedPush.register(context, messageForDistributor = DISTRIBUTOR_MESSAGE)
            return
        }
        if (FirebaseApp.getApps(context).isEmpty()) {
            useUnifiedPush(activity)
            return
        }
        FirebaseMessaging.getInstance().token.addOnCompleteListener(activity) { task ->
            val token: String? = if (task.isSuccessful) task.result else null
            if (token != null) {
                saveFcmToken(context, token)
            } else {
                Log.i(TAG, "no FCM token (${task.exception?.message}); trying UnifiedPush")
                useUnifiedPush(activity)
            }
        }
    }

    /**
     * Wakes this device through the user's UnifiedPush distributor (ntfy, …)
     * if one is installed; may show the system's distributor chooser.
     * [vapid]: the server's VAPID public key (base64url, uncompressed), for
     * distributors that require it.
     */
    @JvmStatic
    @JvmOverloads
    fun useUnifiedPush(activity: Activity, vapid: String? = null) {
        if (UnifiedPush.getDistributors(activity).isEmpty()) {
            Log.i(TAG, "no UnifiedPush distributor installed: no push wake-ups")
            return
        }
        UnifiedPush.tryUseCurrentOrDefaultDistributor(activity) { ok ->
            if (ok) {
                UnifiedPush.register(
                    activity.applicationContext,
                    messageForDistributor = DISTRIBUTOR_MESSAGE,
                    vapid = vapid,
                )
            }
        }
    }

    /** [pendingTarget] with the context [init] remembered (null before it). */
    @JvmStatic
    fun pendingTarget(): String? = appContext?.let { pendingTarget(it) }

    /**
     * The push target as the server's `PushTarget` JSON:
     * `{"kind":"unified_push","endpoint","p256dh","auth"}` when the user uses
     * a distributor, else `{"kind":"fcm","token"}`, or null when there is none
     * yet.
     */
    @JvmStatic
    fun pendingTarget(context: Context): String? {
        val prefs = prefs(context)
        prefs.getString(KEY_UNIFIED_PUSH, null)?.let { return it }
        val token = prefs.getString(KEY_FCM, null) ?: return null
        return JSONObject().put("kind", "fcm").put("token", token).toString()
    }

    fun saveFcmToken(context: Context, token: String) {
        prefs(context).edit().putString(KEY_FCM, token).apply()
        onTargetChanged?.invoke()
    }

    fun saveUnifiedPush(context: Context, endpoint: String, p256dh: String, auth: String) {
        val target = JSONObject()
            .put("kind", "unified_push")
            .put("endpoint", endpoint)
            .put("p256dh", p256dh)
            .put("auth", auth)
        prefs(context).edit().putString(KEY_UNIFIED_PUSH, target.toString()).apply()
        onTargetChanged?.invoke()
    }

    fun clearUnifiedPush(context: Context) {
        prefs(context).edit().remove(KEY_UNIFIED_PUSH).apply()
        onTargetChanged?.invoke()
    }

    private fun prefs(context: Context): SharedPreferences =
        context.getSharedPreferences(PREFS, Context.MODE_PRIVATE)
}
