package app.confab.push

import android.util.Log
import org.unifiedpush.android.connector.FailedReason
import org.unifiedpush.android.connector.PushService
import org.unifiedpush.android.connector.data.PushEndpoint
import org.unifiedpush.android.connector.data.PushMessage

/**
 * UnifiedPush (connector 3.x): the connector's own receiver takes the
 * distributor's broadcasts, decrypts the WebPush body (RFC 8291) and calls
 * this service on the main thread.
 */
class UnifiedPushService : PushService() {
    override fun onMessage(message: PushMessage, instance: String) {
        // The body is the same wake-up JSON as FCM's "confab" field. One that
        // did not decrypt still means "catch up".
        val wake = if (message.decrypted) String(message.content, Charsets.UTF_8) else ""
        CatchUpWorker.enqueue(this, wake)
    }

    override fun onNewEndpoint(endpoint: PushEndpoint, instance: String) {
        val keys = endpoint.pubKeySet
        if (keys == null) {
            // The server encrypts every wake-up (RFC 8291): no keys, no use.
            Log.w(ConfabPush.TAG, "UnifiedPush endpoint without keys, ignored")
            return
        }
        ConfabPush.saveUnifiedPush(this, endpoint.url, keys.pubKey, keys.auth)
    }

    override fun onRegistrationFailed(reason: FailedReason, instance: String) {
        Log.w(ConfabPush.TAG, "UnifiedPush registration failed: $reason")
    }

    override fun onUnregistered(instance: String) {
        ConfabPush.clearUnifiedPush(this)
    }
}
