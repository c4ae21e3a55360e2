// Push on iOS, app side: the APNs and PushKit tokens and the target the
// Rust/JS side registers with the server (`register_push`), the queue of
// CallKit actions and background wake-ups for the app's engine, and their
// announcements on NotificationCenter (which ConfabPushPlugin forwards to
// JS as events). Everything here runs on the main thread.

import Foundation
import UIKit

/// A `PushTarget` of kind `apns` (crates/protocol/src/push.rs).
struct PushTarget: Encodable {
  let kind = "apns"
  let token: String
  let voipToken: String?
  let environment: String

  enum CodingKeys: String, CodingKey {
    case kind, token, environment
    case voipToken = "voip_token"
  }
}

/// A CallKit action for the app's call engine: `accept` or `decline` (a
/// ringing call), `hangup` (an answered call ended from the system UI),
/// `mute` / `unmute`.
/// What the user did in the system's call UI, for the shell
/// (crates/push-plugin `Action`: the Android plugin also sends `open` and
/// `show` with a conversation).
struct CallAction: Encodable {
  var call: String?
  let action: String
  var conversation: String? = nil
}

/// A background (content-available) wake-up that reached the running app.
struct PushWake: Encodable {
  let id: Int
  /// The wake-up's JSON text, for the `on_push` command.
  let data: String
}

private struct PendingPush {
  let wake: PushWake
  var taken = false
  let done: (UIBackgroundFetchResult) -> Void
}

@objc public final class ConfabPush: NSObject {
  @objc public static let shared = ConfabPush()

  /// Posted when the target changes (a new APNs or PushKit token).
  static let targetChanged = Notification.Name("ConfabPushTarget")
  /// Posted for each CallKit action; userInfo `call` (lowercase UUID, as the
  /// core writes call ids) and `action`.
  static let callAction = Notification.Name("ConfabCallAction")
  /// Posted for each background wake-up; userInfo `id`.
  static let backgroundPush = Notification.Name("ConfabBackgroundPush")

  let voip = VoipPushHandler()

  private var started = false
  private var apnsToken: String?
  private var voipToken: String?
  private var callActions: [CallAction] = []
  private var pushes: [Int: PendingPush] = [:]
  private var nextPushId = 1

  /// Hooks the app delegate, asks APNs for a token and registers with
  /// PushKit. Once, as early in launch as the plugin gets to run: a VoIP
  /// push that launched the app is delivered only once PushKit has a
  /// delegate, and must be reported to CallKit right then.
  func start() {
    dispatchPrecondition(condition: .onQueue(.main))
    guard !started else { return }
    started = true
    AppDelegateHooks.install()
    NotificationTaps.shared.install()
    voip.start()
    // No permission needed for the token; showing alerts needs the
    // notification permission (tauri-plugin-notification's request).
    UIApplication.shared.registerForRemoteNotifications()
  }

  // MARK: Tokens

  func didRegister(apnsToken token: Data) {
    apnsToken = Self.hex(token)
    NotificationCenter.default.post(name: Self.targetChanged, object: nil)
  }

  func didFailToRegister(_ error: Error) {
    NSLog("Confab: APNs registration failed: %@", error.localizedDescription)
  }

  func didUpdate(voipToken token: Data?) {
    voipToken = token.map(Self.hex)
    NotificationCenter.default.post(name: Self.targetChanged, object: nil)
  }

  func target() -> PushTarget? {
    guard let token = apnsToken else { return nil }
    return PushTarget(token: token, voipToken: voipToken, environment: Self.environment)
  }

  /// The `PushTarget` JSON to register with the server
  /// ({"kind":"apns","token":hex,"voip_token":hex|absent,"environment":…}),
  /// or nil until APNs has handed out a token.
  @objc public static func pendingTarget() -> String? {
    guard let target = shared.target(), let data = try? JSONEncoder().encode(target) else {
      return nil
    }
    return String(decoding: data, as: UTF8.self)
  }

  /// Which APNs the tokens belong to, from the aps-environment the build
  /// was signed with: `development` in the embedded provisioning profile
  /// means sandbox; App Store and TestFlight builds carry no profile and
  /// use production.
  static let environment: String = {
    #if targetEnvironment(simulator)
      return "sandbox"
    #else
      guard
        let url = Bundle.main.url(forResource: "embedded", withExtension: "mobileprovision"),
        let raw = try? Data(contentsOf: url),
        // A CMS envelope around an XML plist.
        let text = String(data: raw, encoding: .isoLatin1),
        let start = text.range(of: "<?xml"),
        let end = text.range(of: "</plist>", range: start.lowerBound..<text.endIndex),
        let plist = try? PropertyListSerialization.propertyList(
          from: Data(text[start.lowerBound..<end.upperBound].utf8), format: nil)
          as? [String: Any],
        let entitlements = plist["Entitlements"] as? [String: Any],
        let aps = entitlements["aps-environment"] as? String
      else { return "production" }
      return aps == "development" ? "sandbox" : "production"
    #endif
  }()

  static func hex(_ data: Data) -> String {
    data.map { String(format: "%02x", $0) }.joined()
  }

  // MARK: Call actions

  /// Queues a CallKit action for the engine and announces it.
  func post(call: UUID, action: String) {
    queue(CallAction(call: call.uuidString.lowercased(), action: action))
  }

  /// A notification of `conversation` was tapped (NotificationTaps).
  func post(open conversation: String) {
    queue(CallAction(call: nil, action: "open", conversation: conversation))
  }

  private func queue(_ item: CallAction) {
    // Bounded: the shell drains it on every event.
    guard callActions.count < 16 else { return }
    callActions.append(item)
    var info: [String: String] = ["action": item.action]
    info["call"] = item.call
    info["conversation"] = item.conversation
    NotificationCenter.default.post(name: Self.callAction, object: nil, userInfo: info)
  }

  /// The actions not taken yet, oldest first: the engine takes them at
  /// start (an answer from the lock screen can come before the UI runs)
  /// and on each `call-action` event.
  func takeCallActions() -> [CallAction] {
    defer { callActions.removeAll() }
    return callActions
  }

  // MARK: Background wake-ups

  /// A content-available push reached the app: hand it to the engine
  /// (`on_push`), which says when it is done; iOS allows about 30 s.
  func didReceiveBackgroundPush(
    _ userInfo: [AnyHashable: Any], completion: @escaping (UIBackgroundFetchResult) -> Void
  ) {
    guard userInfo["confab"] != nil else {
      completion(.noData)
      return
    }
    let id = nextPushId
    nextPushId += 1
    pushes[id] = PendingPush(
      wake: PushWake(id: id, data: CatchUp.wakeJSON(userInfo["confab"])), done: completion)
    NotificationCenter.default.post(name: Self.backgroundPush, object: nil, userInfo: ["id": id])
    DispatchQueue.main.asyncAfter(deadline: .now() + 25) { self.finishPush(id, newData: false) }
  }

  /// The wake-ups not taken yet; each must then be finished.
  func takePushes() -> [PushWake] {
    var taken: [PushWake] = []
    for (id, push) in pushes.sorted(by: { $0.key < $1.key }) where !push.taken {
      pushes[id]?.taken = true
      taken.append(push.wake)
    }
    return taken
  }

  func finishPush(_ id: Int, newData: Bool) {
    pushes.removeValue(forKey: id)?.done(newData ? .newData : .noData)
  }
}
