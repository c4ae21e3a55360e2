package app.confab

import android.content.Intent
import android.os.Build
import android.os.Bundle
import androidx.activity.enableEdgeToEdge
import app.confab.push.Notices

class MainActivity : TauriActivity() {
  override fun onCreate(savedInstanceState: Bundle?) {
    enableEdgeToEdge()
    super.onCreate(savedInstanceState)
    openedFrom(intent)
  }

  override fun onNewIntent(intent: Intent) {
    // Tauri passes it on to the plugins: ConfabPushPlugin (mobile/android-push)
    // turns a notification's extras into an action for the shell.
    super.onNewIntent(intent)
    setIntent(intent)
    openedFrom(intent)
  }

  /**
   * An incoming call's notification opened the app: show it over the lock
   * screen (only then). Its Answer or Decline button also stops the
   * ringing; a full-screen launch or a tap on the notification keeps it
   * ringing until the call is answered or ends (the shell's answerCall and
   * endCall), since the app's call screen plays no ringtone.
   */
  private fun openedFrom(intent: Intent?) {
    val call = intent?.getStringExtra(Notices.EXTRA_CALL)
    if (call != null && intent?.getStringExtra(Notices.EXTRA_CALL_ACTION) != null) {
      Notices.stopRinging(this, call)
    }
    if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.O_MR1) {
      setShowWhenLocked(call != null)
      setTurnScreenOn(call != null)
    }
  }
}
