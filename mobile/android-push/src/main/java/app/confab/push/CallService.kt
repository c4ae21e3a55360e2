package app.confab.push

import android.Manifest
import android.app.Service
import android.content.Context
import android.content.Intent
import android.content.pm.PackageManager
import android.content.pm.ServiceInfo
import android.os.Build
import android.os.IBinder
import android.util.Log
import androidx.core.app.ServiceCompat
import androidx.core.content.ContextCompat

/**
 * Keeps the process in the foreground during an accepted call, so the call
 * goes on with the screen off or the app in the background. It only shows
 * the ongoing-call notification; the webview runs the media. The shell
 * starts it when a call is accepted and stops it when the call ends
 * ([start], [stop], through JNI).
 */
class CallService : Service() {
    override fun onBind(intent: Intent?): IBinder? = null

    override fun onStartCommand(intent: Intent?, flags: Int, startId: Int): Int {
        val peer = intent?.getStringExtra(EXTRA_PEER_NAME).orEmpty()
        try {
            ServiceCompat.startForeground(this, Notices.ID_ONGOING_CALL, Notices.ongoingCall(this, peer), types())
        } catch (e: RuntimeException) {
            // Refused (started from the background, or a prerequisite of the
            // type is missing): the call still runs while the app is visible.
            Log.w(ConfabPush.TAG, "cannot keep the call in the foreground", e)
            stopSelf()
        }
        return START_NOT_STICKY
    }

    /** The webview (and the call) go away with the task. */
    override fun onTaskRemoved(rootIntent: Intent?) {
        stopSelf()
    }

    private fun types(): Int {
        if (Build.VERSION.SDK_INT < Build.VERSION_CODES.Q) return 0
        var types = ServiceInfo.FOREGROUND_SERVICE_TYPE_PHONE_CALL
        // The microphone type needs RECORD_AUDIO granted (Android 14+ checks).
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.R &&
            ContextCompat.checkSelfPermission(this, Manifest.permission.RECORD_AUDIO) ==
            PackageManager.PERMISSION_GRANTED
        ) {
            types = types or ServiceInfo.FOREGROUND_SERVICE_TYPE_MICROPHONE
        }
        return types
    }

    companion object {
        private const val EXTRA_PEER_NAME = "peer_name"

        /**
         * Call while the app is visible: Android 12+ refuses it from the
         * background. Returns whether the service was started.
         */
        @JvmStatic
        fun start(context: Context, peerName: String): Boolean {
            val intent = Intent(context, CallService::class.java).putExtra(EXTRA_PEER_NAME, peerName)
            return try {
                ContextCompat.startForegroundService(context, intent)
                true
            } catch (e: IllegalStateException) {
                // ForegroundServiceStartNotAllowedException (Android 12+).
                Log.w(ConfabPush.TAG, "cannot start the call service", e)
                false
            }
        }

        @JvmStatic
        fun stop(context: Context) {
            context.stopService(Intent(context, CallService::class.java))
        }
    }
}
