package app.confab.push

import android.Manifest
import android.annotation.SuppressLint
import android.app.Notification
import android.app.PendingIntent
import android.content.Context
import android.content.Intent
import android.content.pm.PackageManager
import android.media.AudioAttributes
import android.media.RingtoneManager
import android.os.Build
import android.util.Log
import androidx.core.app.NotificationChannelCompat
import androidx.core.app.NotificationCompat
import androidx.core.app.NotificationManagerCompat
import androidx.core.app.Person
import androidx.core.content.ContextCompat
import org.json.JSONException
import org.json.JSONObject

/** The notifications the native side posts: messages, a ringing call, an ongoing call. */
object Notices {
    const val CHANNEL_MESSAGES = "messages"
    const val CHANNEL_CALLS = "calls"
    const val CHANNEL_ONGOING_CALL = "ongoing_call"
    const val CHANNEL_BACKGROUND = "background"

    /**
     * Extras of the intents that open the app (strings): [ConfabPushPlugin]
     * reads them and the shell acts on them.
     */
    const val EXTRA_CONVERSATION = "conversation"
    const val EXTRA_CALL = "call"
    /** "accept" or "decline", from the ringing call's buttons. */
    const val EXTRA_CALL_ACTION = "call_action"

    /** The action of those intents, so the app tells them from a plain launch. */
    const val ACTION_OPEN = "app.confab.OPEN"

    const val ID_CATCHING_UP = 1
    const val ID_ONGOING_CALL = 2
    /** Tagged with the conversation: one notification per conversation. */
    private const val ID_MESSAGE = 3
    /** Tagged with the call. */
    private const val ID_RINGING = 4
    /** The server's default ring time (`confab-server --call-ring-seconds`). */
    private const val RING_TIMEOUT_MS = 45_000L

    /** Shows what a catch-up ([ConfabNative.catchUp]) returned. */
    fun showCatchUp(context: Context, reply: String) {
        val json = try {
            JSONObject(reply)
        } catch (e: JSONException) {
            Log.w(ConfabPush.TAG, "unreadable catch-up reply", e)
            return
        }
        // The app runs in this process: its own client caught up and
        // notified (crates/mobile, set_app_handler).
        if (json.optBoolean("handled_by_app")) return
        json.optJSONObject("error")?.let {
            // "not_signed_in" is normal after signing out; nothing to show.
            Log.i(ConfabPush.TAG, "catch-up: ${it.optString("kind")}: ${it.optString("message")}")
            return
        }
        if (!json.optBoolean("synced")) {
            Log.i(ConfabPush.TAG, "catch-up ran out of time; the next wake-up or start finishes it")
        }
        val notices = json.optJSONArray("notices")
        if (notices != null) {
            for (i in 0 until notices.length()) {
                val n = notices.optJSONObject(i) ?: continue
                message(
                    context,
                    n.optString("conversation"),
                    n.optString("title"),
                    n.optString("body"),
                    n.optBoolean("sound", true),
                )
            }
        }
        // Null (JSON null) when no call rings for this device.
        val ringing = json.optJSONObject("ringing")
        if (ringing != null &&
            !ringing.optBoolean("outgoing") &&
            ringing.optJSONObject("phase")?.optString("phase") == "ringing"
        ) {
            incomingCall(context, ringing)
        }
    }

    @SuppressLint("MissingPermission") // checked in canNotify
    fun message(context: Context, conversation: String, title: String, body: String, sound: Boolean) {
        if (!canNotify(context)) return
        ensureChannels(context)
        val open = openApp(context, "message:$conversation", EXTRA_CONVERSATION to conversation)
        val notification = NotificationCompat.Builder(context, CHANNEL_MESSAGES)
            .setSmallIcon(R.drawable.ic_stat_confab)
            .setContentTitle(title)
            .setContentText(body)
            .setStyle(NotificationCompat.BigTextStyle().bigText(body))
            .setCategory(NotificationCompat.CATEGORY_MESSAGE)
            .setPriority(NotificationCompat.PRIORITY_HIGH)
            // A channel has one sound; a notice without sound is posted silent.
            .setSilent(!sound)
            .setAutoCancel(true)
            .setContentIntent(open)
            .build()
        NotificationManagerCompat.from(context).notify(conversation.ifEmpty { null }, ID_MESSAGE, notification)
    }

    /**
     * A call ringing for this device ([call]: the catch-up's `ringing`). A
     * full-screen intent (over the lock screen where Android allows it), else
     * a heads-up; CallStyle with Answer and Decline on Android 12+.
     */
    @SuppressLint("MissingPermission") // checked in canNotify
    fun incomingCall(context: Context, call: JSONObject) {
        if (!canNotify(context)) return
        ensureChannels(context)
        val callId = call.optString("call")
        val conversation = call.optString("conversation")
        val video = call.optBoolean("video")
        val name = call.optString("peer_name").ifEmpty { context.getString(R.string.call_unknown_caller) }
        val caller = Person.Builder().setName(name).setImportant(true).build()
        val extras = arrayOf(EXTRA_CALL to callId, EXTRA_CONVERSATION to conversation)
        val show = openApp(context, "call:$callId", *extras)
        // Both buttons open the app, which carries the answer out (decline
        // included: declining tells the server, which only the client can).
        val answer = openApp(context, "answer:$callId", *extras, EXTRA_CALL_ACTION to "accept")
        val decline = openApp(context, "decline:$callId", *extras, EXTRA_CALL_ACTION to "decline")
        val notification = NotificationCompat.Builder(context, CHANNEL_CALLS)
            .setSmallIcon(R.drawable.ic_stat_confab)
            .setContentTitle(name)
            .setContentText(context.getString(if (video) R.string.call_incoming_video else R.string.call_incoming))
            .setStyle(NotificationCompat.CallStyle.forIncomingCall(caller, decline, answer).setIsVideo(video))
            .setCategory(NotificationCompat.CATEGORY_CALL)
            .setPriority(NotificationCompat.PRIORITY_MAX)
            .setContentIntent(show)
            // Android 14+ keeps full-screen intents for calling apps the
            // user allowed; without it this is a heads-up notification.
            .setFullScreenIntent(show, true)
            .setOngoing(true)
            .setTimeoutAfter(RING_TIMEOUT_MS)
            .build()
        // Ring until answered, declined or timed out.
        notification.flags = notification.flags or Notification.FLAG_INSISTENT
        NotificationManagerCompat.from(context).notify(callId, ID_RINGING, notification)
    }

    /** Removes the ringing notification of [callId]. */
    fun stopRinging(context: Context, callId: String) {
        NotificationManagerCompat.from(context).cancel(callId, ID_RINGING)
    }

    /** For [CallService]: the notification of the call under way. */
    fun ongoingCall(context: Context, peerName: String): Notification {
        ensureChannels(context)
        val text = if (peerName.isEmpty()) {
            context.getString(R.string.call_ongoing_unnamed)
        } else {
            context.getString(R.string.call_ongoing, peerName)
        }
        return NotificationCompat.Builder(context, CHANNEL_ONGOING_CALL)
            .setSmallIcon(R.drawable.ic_stat_confab)
            .setContentTitle(text)
            .setCategory(NotificationCompat.CATEGORY_CALL)
            .setOngoing(true)
            .setSilent(true)
            .setContentIntent(openApp(context, "ongoing"))
            .build()
    }

    /** For [CatchUpWorker] before Android 12, where expedited work runs as a foreground service. */
    fun catchingUp(context: Context): Notification {
        ensureChannels(context)
        return NotificationCompat.Builder(context, CHANNEL_BACKGROUND)
            .setSmallIcon(R.drawable.ic_stat_confab)
            .setContentTitle(context.getString(R.string.catching_up))
            .setSilent(true)
            .setOngoing(true)
            .build()
    }

    private fun canNotify(context: Context): Boolean {
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU &&
            ContextCompat.checkSelfPermission(context, Manifest.permission.POST_NOTIFICATIONS) !=
            PackageManager.PERMISSION_GRANTED
        ) {
            return false
        }
        return NotificationManagerCompat.from(context).areNotificationsEnabled()
    }

    /** Creating a channel that exists changes nothing (the user's choices stay). */
    private fun ensureChannels(context: Context) {
        val manager = NotificationManagerCompat.from(context)
        manager.createNotificationChannel(
            NotificationChannelCompat.Builder(CHANNEL_MESSAGES, NotificationManagerCompat.IMPORTANCE_HIGH)
                .setName(context.getString(R.string.channel_messages))
                .build(),
        )
        val ring = AudioAttributes.Builder()
            .setUsage(AudioAttributes.USAGE_NOTIFICATION_RINGTONE)
            .setContentType(AudioAttributes.CONTENT_TYPE_SONIFICATION)
            .build()
        manager.createNotificationChannel(
            NotificationChannelCompat.Builder(CHANNEL_CALLS, NotificationManagerCompat.IMPORTANCE_HIGH)
                .setName(context.getString(R.string.channel_calls))
                .setSound(RingtoneManager.getDefaultUri(RingtoneManager.TYPE_RINGTONE), ring)
                .setVibrationEnabled(true)
                .build(),
        )
        manager.createNotificationChannel(
            NotificationChannelCompat.Builder(CHANNEL_ONGOING_CALL, NotificationManagerCompat.IMPORTANCE_LOW)
                .setName(context.getString(R.string.channel_ongoing_call))
                .build(),
        )
        manager.createNotificationChannel(
            NotificationChannelCompat.Builder(CHANNEL_BACKGROUND, NotificationManagerCompat.IMPORTANCE_LOW)
                .setName(context.getString(R.string.channel_background))
                .build(),
        )
    }

    /**
     * Opens the app's launcher activity (singleTask: a running one gets
     * onNewIntent) with [extras]. [key] tells the PendingIntents apart, since
     * extras do not. This library does not know the activity's class: the
     * package manager does.
     */
    private fun openApp(context: Context, key: String, vararg extras: Pair<String, String>): PendingIntent {
        val launcher = context.packageManager.getLaunchIntentForPackage(context.packageName)
        val intent = (launcher ?: Intent().setPackage(context.packageName))
            .setAction(ACTION_OPEN)
            .addFlags(Intent.FLAG_ACTIVITY_NEW_TASK)
        for ((name, value) in extras) {
            intent.putExtra(name, value)
        }
        return PendingIntent.getActivity(
            context,
            key.hashCode(),
            intent,
            PendingIntent.FLAG_IMMUTABLE or PendingIntent.FLAG_UPDATE_CURRENT,
        )
    }
}
