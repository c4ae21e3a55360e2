package app.confab.push

import android.app.Activity
import android.content.Intent
import android.webkit.WebView
import androidx.appcompat.app.AppCompatActivity
import app.tauri.annotation.Command
import app.tauri.annotation.InvokeArg
import app.tauri.annotation.TauriPlugin
import app.tauri.plugin.Invoke
import app.tauri.plugin.JSArray
import app.tauri.plugin.JSObject
import app.tauri.plugin.Plugin
import org.json.JSONException
import org.json.JSONObject

@InvokeArg
class CallArgs {
    lateinit var call: String
    var conversation: String? = null
    var peerName: String? = null
    var video: Boolean = false
    var reason: String? = null
}

/**
 * The shell's way to the phone: Tauri loads this class by name
 * (`register_android_plugin("app.confab.push", "ConfabPushPlugin")`, in the
 * plugin crate `crates/push-plugin`), and the Rust side calls its commands
 * with `run_mobile_plugin` (the same names as the iOS plugin's):
 *
 * - `pendingTarget` -> `{target: PushTarget | null}`
 * - `takeCallActions` -> `{actions: [{action, call?, conversation?}]}`: what
 *   the user chose in a notification that opened the app (`open` a
 *   conversation, `show`, `accept` or `decline` a call)
 * - `incomingCall {call, conversation, peerName, video}`: ring (the
 *   CallStyle notification, with the ringtone)
 * - `answerCall {call, peerName}`: stop ringing, keep the call going in the
 *   foreground ([CallService]); also for a call this device placed
 * - `endCall {call}`: stop ringing and the foreground service
 * - `takePushes`, `finishPush`, `profileDir`, `isInBackground`: iOS only;
 *   here they do nothing (a push reaching the running app arrives through
 *   [ConfabNative], which hands it to the app's client)
 *
 * Events (`registerListener`): `target` (the push target changed) and
 * `call-action` (then `takeCallActions`).
 */
@TauriPlugin
class ConfabPushPlugin(private val activity: Activity) : Plugin(activity) {
    private val actions = ArrayList<JSObject>()

    init {
        ConfabPush.init(activity)
        ConfabPush.onTargetChanged = {
            activity.runOnUiThread { trigger("target", JSObject()) }
        }
    }

    override fun load(webView: WebView) {
        ConfabPush.start(activity)
        // The notification that started the app, if one did.
        queue(activity.intent)
    }

    override fun onNewIntent(intent: Intent) {
        queue(intent)
    }

    /**
     * Tauri loads a plugin once per process: an activity made again later
     * (Back, then a notification) reaches it here, not in [load].
     */
    override fun onResume(activity: AppCompatActivity) {
        queue(activity.intent)
    }

    /** Turns an intent from [Notices] into an action for the shell, once. */
    private fun queue(intent: Intent?) {
        if (intent?.action != Notices.ACTION_OPEN) return
        val call = intent.getStringExtra(Notices.EXTRA_CALL)
        val conversation = intent.getStringExtra(Notices.EXTRA_CONVERSATION)
        val action = when {
            call != null -> intent.getStringExtra(Notices.EXTRA_CALL_ACTION) ?: "show"
            conversation != null -> "open"
            else -> return
        }
        // Consumed: a configuration change or a restore must not replay it.
        intent.action = null
        val entry = JSObject().put("action", action)
        call?.let { entry.put("call", it) }
        conversation?.let { entry.put("conversation", it) }
        synchronized(actions) {
            // Bounded: the shell drains it on every event.
            if (actions.size < MAX_QUEUED) actions.add(entry)
        }
        trigger("call-action", JSObject())
    }

    @Command
    fun pendingTarget(invoke: Invoke) {
        val target = ConfabPush.pendingTarget(activity)?.let {
            try {
                JSONObject(it)
            } catch (e: JSONException) {
                null
            }
        }
        invoke.resolve(JSObject().put("target", target ?: JSONObject.NULL))
    }

    @Command
    fun takeCallActions(invoke: Invoke) {
        val taken = JSArray()
        synchronized(actions) {
            actions.forEach { taken.put(it) }
            actions.clear()
        }
        invoke.resolve(JSObject().put("actions", taken))
    }

    @Command
    fun incomingCall(invoke: Invoke) {
        val args = invoke.parseArgs(CallArgs::class.java)
        val call = JSONObject()
            .put("call", args.call)
            .put("conversation", args.conversation.orEmpty())
            .put("peer_name", args.peerName.orEmpty())
            .put("video", args.video)
        Notices.incomingCall(activity, call)
        invoke.resolve()
    }

    @Command
    fun answerCall(invoke: Invoke) {
        val args = invoke.parseArgs(CallArgs::class.java)
        Notices.stopRinging(activity, args.call)
        CallService.start(activity, args.peerName.orEmpty())
        invoke.resolve()
    }

    @Command
    fun endCall(invoke: Invoke) {
        val args = invoke.parseArgs(CallArgs::class.java)
        Notices.stopRinging(activity, args.call)
        CallService.stop(activity)
        invoke.resolve()
    }

    @Command
    fun takePushes(invoke: Invoke) {
        invoke.resolve(JSObject().put("pushes", JSArray()))
    }

    @Command
    fun finishPush(invoke: Invoke) {
        invoke.resolve()
    }

    /** An activity exists: the app is not running in the background for a push. */
    @Command
    fun isInBackground(invoke: Invoke) {
        invoke.resolve(JSObject().put("background", false))
    }

    @Command
    fun profileDir(invoke: Invoke) {
        invoke.resolve(JSObject().put("path", JSONObject.NULL))
    }

    private companion object {
        const val MAX_QUEUED = 16
    }
}
