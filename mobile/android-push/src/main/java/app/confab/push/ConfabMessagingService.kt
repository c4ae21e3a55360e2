package app.confab.push

import com.google.firebase.messaging.FirebaseMessagingService
import com.google.firebase.messaging.RemoteMessage

/**
 * FCM. The server sends data messages only: `data["confab"]` is the wake-up
 * JSON (`{"kind": "message"|"update"|"call", "conversation", "count",
 * "call"?, "video"?}`), which says nothing a notification could show; the
 * catch-up finds out what to show.
 */
class ConfabMessagingService : FirebaseMessagingService() {
    override fun onMessageReceived(message: RemoteMessage) {
        CatchUpWorker.enqueue(this, message.data["confab"].orEmpty())
    }

    /** FCM dropped pending messages (too many while offline): catch up anyway. */
    override fun onDeletedMessages() {
        CatchUpWorker.enqueue(this, "")
    }

    override fun onNewToken(token: String) {
        ConfabPush.saveFcmToken(this, token)
    }
}
