package app.confab

import android.content.Intent
import android.os.Build
import android.os.Bundle
import androidx.activity.enableEdgeToEdge
import app.confab.push.ConfabPush
import app.confab.push.Notices

class MainActivity : TauriActivity() {
  override fun onCreate(savedInstanceState: Bundle?) {
    enableEdgeToEdge()
    // Before super: the Rust side may ask ConfabPush for the push target as
    // soon as the app is set up.
    ConfabPush.init(this)
    super.onCreate(savedInstanceState)
    openedFrom(intent)
    ConfabPush.start(this)
  }

  override fun onNewIntent(intent: Intent) {
    super.onNewIntent(intent)
    // So getIntent() gives the shell the newest one (singleTask reuses us).
    setIntent(intent)
    openedFrom(intent)
  }

  /**
   * An incoming call's notification opened the app: show it over the lock
   * screen (only then), and stop the notification ringing, since the app's
   * own call screen takes over. The intent's extras (Notices.EXTRA_*) are
   * for the shell to read.
   */
  private fun openedFrom(intent: Intent?) {
    val call = intent?.getStringExtra(Notices.EXTRA_CALL)
    if (call != null) {
      Notices.stopRinging(this, call)
    }
    if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.O_MR1) {
      setShowWhenLocked(call != null)
      setTurnScreenOn(call != null)
    }
  }
}
