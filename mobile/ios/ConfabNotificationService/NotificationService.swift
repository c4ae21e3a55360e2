// Confab's Notification Service Extension. A message push carries no
// content, only a placeholder alert ("New message", mutable-content 1) and
// the wake-up under "confab"; iOS runs this extension before showing it,
// and the extension catches up on the shared profile through the Rust core
// and shows what the core says to show, as the running app would.

import UserNotifications

final class NotificationService: UNNotificationServiceExtension {
  /// The core's budget: most of the extension's ~30 s, leaving time to
  /// deliver.
  private static let budgetMs: UInt64 = 25_000

  private let lock = NSLock()
  private var contentHandler: ((UNNotificationContent) -> Void)?
  private var placeholder: UNNotificationContent?

  override func didReceive(
    _ request: UNNotificationRequest,
    withContentHandler contentHandler: @escaping (UNNotificationContent) -> Void
  ) {
    lock.lock()
    self.contentHandler = contentHandler
    placeholder = request.content
    lock.unlock()

    let wake = request.content.userInfo["confab"]
    // The catch-up blocks on the network: iOS kills an extension that
    // stalls its main thread while starting, so it runs on a worker.
    DispatchQueue.global(qos: .userInitiated).async {
      let caught = CatchUp.run(wake: wake, budgetMs: Self.budgetMs)
      self.deliver(Self.content(for: caught, replacing: request.content))
    }
  }

  override func serviceExtensionTimeWillExpire() {
    // Out of time: the best attempt is the placeholder; the app catches up
    // when opened.
    lock.lock()
    let best = placeholder
    lock.unlock()
    if let best = best {
      deliver(best)
    }
  }

  /// Hands `content` to iOS once, whichever of the catch-up and the
  /// deadline comes first.
  private func deliver(_ content: UNNotificationContent) {
    lock.lock()
    let handler = contentHandler
    contentHandler = nil
    lock.unlock()
    handler?(content)
  }

  private static func content(
    for caught: CaughtUp, replacing placeholder: UNNotificationContent
  ) -> UNNotificationContent {
    guard let content = placeholder.mutableCopy() as? UNMutableNotificationContent else {
      return placeholder
    }
    guard caught.error == nil, let notices = caught.notices, let first = notices.first else {
      // Failed, or nothing to show (read elsewhere, muted, or the budget ran
      // out): iOS shows an alert whatever the extension does (dropping it
      // needs Apple's com.apple.developer.usernotifications.filtering
      // entitlement), so keep the placeholder, but quietly once synced.
      if caught.error == nil, caught.synced == true {
        content.sound = nil
      }
      return content
    }
    content.title = first.title
    content.body =
      notices.count == 1
      ? first.body
      : "\(first.body)\n…and \(notices.count - 1) more"
    content.threadIdentifier = first.conversation
    content.sound = notices.contains(where: { $0.sound }) ? .default : nil
    // For the app when the notification is tapped.
    var info = content.userInfo
    info["conversation"] = first.conversation
    content.userInfo = info
    return content
  }
}
