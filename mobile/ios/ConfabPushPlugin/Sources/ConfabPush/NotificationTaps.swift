// Taps on Confab's notifications open their conversation.
//
// tauri-plugin-notification (2.8) is the notification center's delegate. It
// ignores pushes (the alerts the Notification Service Extension rewrote),
// and for the app's own notifications it does not pass their `extra` on
// iOS, so the shell never learns which conversation a tap was for. This
// proxy stands in front of it: it reads the conversation (the app's
// `extra`, the wake-up's, or the thread the extension set), queues an
// `open` action for the shell (crates/push-plugin `Action`), and forwards
// every call to the plugin's delegate unchanged.

import Foundation
import UserNotifications

final class NotificationTaps: NSObject, UNUserNotificationCenterDelegate {
  static let shared = NotificationTaps()

  /// The delegate before this one (tauri-plugin-notification's manager).
  private var next: UNUserNotificationCenterDelegate?

  /// Once, at launch, after tauri-plugin-notification set its delegate.
  func install() {
    let center = UNUserNotificationCenter.current()
    guard center.delegate !== self else { return }
    next = center.delegate
    center.delegate = self
  }

  func userNotificationCenter(
    _ center: UNUserNotificationCenter, willPresent notification: UNNotification,
    withCompletionHandler completionHandler: @escaping (UNNotificationPresentationOptions) -> Void
  ) {
    // Optional requirement: nil when the next delegate lacks it.
    if next?.userNotificationCenter?(
      center, willPresent: notification, withCompletionHandler: completionHandler) == nil
    {
      completionHandler([])
    }
  }

  func userNotificationCenter(
    _ center: UNUserNotificationCenter, didReceive response: UNNotificationResponse,
    withCompletionHandler completionHandler: @escaping () -> Void
  ) {
    if response.actionIdentifier == UNNotificationDefaultActionIdentifier,
      let conversation = Self.conversation(of: response.notification.request.content)
    {
      ConfabPush.shared.post(open: conversation)
    }
    if next?.userNotificationCenter?(
      center, didReceive: response, withCompletionHandler: completionHandler) == nil
    {
      completionHandler()
    }
  }

  static func conversation(of content: UNNotificationContent) -> String? {
    let info = content.userInfo
    // The app's own notification: tauri-plugin-notification keeps `extra`
    // under this key (the shell puts the conversation there).
    if let extra = info["__EXTRA__"] as? [String: Any], let id = extra["conversation"] as? String {
      return id
    }
    // A push: the wake-up names the conversation when it is about one.
    if let wake = info["confab"] as? [String: Any], let id = wake["conversation"] as? String {
      return id
    }
    // The extension threads its alerts by conversation.
    return content.threadIdentifier.isEmpty ? nil : content.threadIdentifier
  }
}
