// Confab's iOS push plugin, registered by the Rust side with
// `tauri::ios_plugin_binding!(init_plugin_confab_push)` and
// `api.register_ios_plugin(init_plugin_confab_push)` (plugin name
// "confab-push", Rust side in crates/push-plugin). It starts push at launch
// (ConfabPush.start) and gives the shell (the Android plugin has the same
// commands and events):
//
// commands (Rust: PluginHandle::run_mobile_plugin("<camelCase name>", args);
// not granted to the web UI):
//   pending_target          -> {target?: PushTarget}  (for register_push)
//   take_call_actions       -> {actions: [{call, action}]}
//   incoming_call {call, conversation, peerName, video}  ring on CallKit
//                           (or name the caller of a call a push reported)
//   answer_call {call}      the user answered in the app's UI
//   end_call {call, reason} the call ended in the app (VoipPushHandler.end)
//   take_pushes             -> {pushes: [{id, data}]}  (data: for on_push)
//   finish_push {id, newData?}
//   profile_dir             -> {path?}  (the App Group profile directory)
//   is_in_background        -> {background}  (launched for a push?)
// events (registerListener with a Channel, from Rust):
//   target        a new token: call pending_target and register it
//   call-action   {call, action}: then take_call_actions
//   push          {id}: then take_pushes, on_push with each `data`, and
//                 finish_push (iOS allows ~30 s; finished at 25 s anyway)

import Tauri
import UIKit
import WebKit

struct CallArgs: Decodable {
  let call: String
  let reason: String?
}

struct IncomingCallArgs: Decodable {
  let call: String
  let conversation: String
  let peerName: String
  let video: Bool
}


struct FinishPushArgs: Decodable {
  let id: Int
  let newData: Bool?
}

struct PendingTargetReply: Encodable {
  let target: PushTarget?
}

struct CallActionsReply: Encodable {
  let actions: [CallAction]
}

struct PushesReply: Encodable {
  let pushes: [PushWake]
}

struct PushEvent: Encodable {
  let id: Int
}

struct ProfileDirReply: Encodable {
  let path: String?
}

struct BackgroundReply: Encodable {
  let background: Bool
}

class ConfabPushPlugin: Plugin {
  private var observers: [NSObjectProtocol] = []

  override init() {
    super.init()
    let center = NotificationCenter.default
    // The plugin may be created before UIApplicationMain has run; then push
    // starts when launch finishes, else in load(webview:). Either way during
    // launch, which a VoIP push that launched the app needs.
    observers.append(
      center.addObserver(
        forName: UIApplication.didFinishLaunchingNotification, object: nil, queue: .main
      ) { _ in ConfabPush.shared.start() })
    observers.append(
      center.addObserver(forName: ConfabPush.targetChanged, object: nil, queue: .main) {
        [weak self] _ in
        try? self?.trigger("target", data: PendingTargetReply(target: ConfabPush.shared.target()))
      })
    observers.append(
      center.addObserver(forName: ConfabPush.callAction, object: nil, queue: .main) {
        [weak self] note in
        guard let action = note.userInfo?["action"] as? String else { return }
        let item = CallAction(
          call: note.userInfo?["call"] as? String, action: action,
          conversation: note.userInfo?["conversation"] as? String)
        try? self?.trigger("call-action", data: item)
      })
    observers.append(
      center.addObserver(forName: ConfabPush.backgroundPush, object: nil, queue: .main) {
        [weak self] note in
        guard let id = note.userInfo?["id"] as? Int else { return }
        try? self?.trigger("push", data: PushEvent(id: id))
      })
  }

  deinit {
    for observer in observers {
      NotificationCenter.default.removeObserver(observer)
    }
  }

  override func load(webview: WKWebView) {
    Self.onMain { ConfabPush.shared.start() }
  }

  @objc public func pendingTarget(_ invoke: Invoke) {
    Self.onMain { invoke.resolve(PendingTargetReply(target: ConfabPush.shared.target())) }
  }

  @objc public func takeCallActions(_ invoke: Invoke) {
    Self.onMain { invoke.resolve(CallActionsReply(actions: ConfabPush.shared.takeCallActions())) }
  }

  @objc public func incomingCall(_ invoke: Invoke) throws {
    let args = try invoke.parseArgs(IncomingCallArgs.self)
    Self.onCall(invoke, args.call) {
      ConfabPush.shared.voip.incoming(
        $0, conversation: args.conversation, peerName: args.peerName, video: args.video)
    }
  }

  @objc public func answerCall(_ invoke: Invoke) throws {
    let args = try invoke.parseArgs(CallArgs.self)
    Self.onCall(invoke, args.call) { ConfabPush.shared.voip.answer($0) }
  }

  @objc public func endCall(_ invoke: Invoke) throws {
    let args = try invoke.parseArgs(CallArgs.self)
    Self.onCall(invoke, args.call) { ConfabPush.shared.voip.end($0, reason: args.reason ?? "remote") }
  }

  @objc public func takePushes(_ invoke: Invoke) {
    Self.onMain { invoke.resolve(PushesReply(pushes: ConfabPush.shared.takePushes())) }
  }

  @objc public func finishPush(_ invoke: Invoke) throws {
    let args = try invoke.parseArgs(FinishPushArgs.self)
    Self.onMain {
      ConfabPush.shared.finishPush(args.id, newData: args.newData ?? false)
      invoke.resolve()
    }
  }

  @objc public func isInBackground(_ invoke: Invoke) {
    Self.onMain {
      invoke.resolve(
        BackgroundReply(background: UIApplication.shared.applicationState == .background))
    }
  }

  @objc public func profileDir(_ invoke: Invoke) {
    invoke.resolve(ProfileDirReply(path: ConfabShared.profileDir()?.path))
  }

  /// Runs `body` on the main thread with the call `id` names and resolves
  /// the command, or rejects it when `id` is not a call id.
  private static func onCall(_ invoke: Invoke, _ id: String, _ body: @escaping (UUID) -> Void) {
    guard let uuid = UUID(uuidString: id) else {
      return invoke.reject("not a call id: \(id)")
    }
    onMain {
      body(uuid)
      invoke.resolve()
    }
  }

  /// Plugin commands arrive on Tauri's IPC queue; push state lives on main.
  private static func onMain(_ body: @escaping () -> Void) {
    if Thread.isMainThread {
      body()
    } else {
      DispatchQueue.main.async(execute: body)
    }
  }
}

@_cdecl("init_plugin_confab_push")
public func initPlugin() -> Plugin {
  return ConfabPushPlugin()
}
