// Incoming calls while Confab is not in the foreground. The server sends a
// VoIP push (topic app.confab.voip, payload {"confab": wake}) to the PushKit
// token; iOS (13+) terminates an app that takes a VoIP push without
// reporting a call to CallKit in the same callback, and stops delivering
// them after a few such misses. So the call rings at once as "Confab call",
// and the core's catch-up then names the peer, or ends the call when it was
// over before the push arrived.
//
// CallKit's answer/decline reach the app's call engine as
// ConfabPush.callAction notifications ("ConfabCallAction", userInfo
// {call, action}); the engine tells CallKit about its own changes through
// the plugin's answer_call / end_call commands. Main thread throughout.

import AVFoundation
import CallKit
import Foundation
import PushKit

final class VoipPushHandler: NSObject, PKPushRegistryDelegate, CXProviderDelegate {
  /// How long a call rings without an answer before CallKit is told so.
  static let ringTimeout: TimeInterval = 60
  /// The catch-up's budget (the core caps it at 25 s).
  static let budgetMs: UInt64 = 25_000

  private struct Call {
    var answered = false
    /// The engine asked for this answer or hang-up itself: CallKit's
    /// action is not reported back to it.
    var local = false
  }

  private var registry: PKPushRegistry?
  private var provider: CXProvider?
  private let controller = CXCallController()
  private var calls: [UUID: Call] = [:]

  /// Once, at launch (ConfabPush.start).
  func start() {
    let provider = CXProvider(configuration: Self.configuration())
    provider.setDelegate(self, queue: nil)
    self.provider = provider

    let registry = PKPushRegistry(queue: .main)
    registry.delegate = self
    registry.desiredPushTypes = [.voIP]
    self.registry = registry
  }

  private static func configuration() -> CXProviderConfiguration {
    // The system shows the app's name (CFBundleName) on the call screen.
    let config = CXProviderConfiguration()
    config.supportsVideo = true
    config.maximumCallGroups = 1
    config.maximumCallsPerCallGroup = 1
    config.supportedHandleTypes = [.generic]
    // The handle is an opaque conversation id: nothing to call back from
    // the Phone app's recents.
    config.includesCallsInRecents = false
    return config
  }

  // MARK: PushKit

  func pushRegistry(
    _ registry: PKPushRegistry, didUpdate pushCredentials: PKPushCredentials, for type: PKPushType
  ) {
    guard type == .voIP else { return }
    ConfabPush.shared.didUpdate(voipToken: pushCredentials.token)
  }

  func pushRegistry(_ registry: PKPushRegistry, didInvalidatePushTokenFor type: PKPushType) {
    guard type == .voIP else { return }
    ConfabPush.shared.didUpdate(voipToken: nil)
  }

  func pushRegistry(
    _ registry: PKPushRegistry, didReceiveIncomingPushWith payload: PKPushPayload,
    for type: PKPushType, completion: @escaping () -> Void
  ) {
    guard type == .voIP, let provider = provider else {
      completion()
      return
    }
    let wake = payload.dictionaryPayload["confab"]
    let fields = wake as? [String: Any]
    // The server's call id; a push without one must still ring (and then
    // ends when the catch-up finds nothing ringing).
    let uuid = (fields?["call"] as? String).flatMap(UUID.init(uuidString:)) ?? UUID()

    let update = Self.callUpdate(
      handle: (fields?["conversation"] as? String) ?? uuid.uuidString.lowercased(),
      name: "Confab call", video: fields?["video"] as? Bool ?? false)

    let known = calls[uuid] != nil
    if !known {
      calls[uuid] = Call()
    }
    provider.reportNewIncomingCall(with: uuid, update: update) { error in
      DispatchQueue.main.async {
        defer { completion() }
        if let error = error {
          // Already ringing (a repeated push): its catch-up is under way.
          // Otherwise iOS refused to ring (Do Not Disturb, blocked).
          if (error as? CXErrorCodeIncomingCallError)?.code != .callUUIDAlreadyExists, !known {
            self.calls[uuid] = nil
          }
          return
        }
        DispatchQueue.main.asyncAfter(deadline: .now() + Self.ringTimeout) {
          if let call = self.calls[uuid], !call.answered {
            self.reportEnded(uuid, reason: .unanswered)
          }
        }
        self.catchUp(uuid, wake: wake)
      }
    }
  }

  /// Syncs through the core off the main thread, then names the peer or
  /// ends the call.
  private func catchUp(_ uuid: UUID, wake: Any?) {
    let json = CatchUp.wakeJSON(wake)
    DispatchQueue.global(qos: .userInitiated).async {
      let caught = CatchUp.run(wake: json, budgetMs: Self.budgetMs)
      DispatchQueue.main.async { self.apply(caught, to: uuid) }
    }
  }

  private func apply(_ caught: CaughtUp, to uuid: UUID) {
    // Answered meanwhile: the engine has it. Gone: declined or ended. Taken
    // by the app's running client: its engine names the peer (incoming_call)
    // or ends the call (end_call).
    guard let call = calls[uuid], !call.answered, caught.handledByApp != true else { return }
    if let ringing = caught.ringing {
      guard UUID(uuidString: ringing.call).map({ $0 == uuid }) ?? true else {
        // Another call rings now; its own push reports it.
        reportEnded(uuid, reason: .remoteEnded)
        return
      }
      let update = CXCallUpdate()
      update.remoteHandle = CXHandle(type: .generic, value: ringing.conversation)
      update.localizedCallerName = ringing.peerName
      update.hasVideo = ringing.video
      provider?.reportCall(with: uuid, updated: update)
    } else if caught.error == nil, caught.synced == true {
      // Synced and nothing rings: the call was over before the push came.
      reportEnded(uuid, reason: .remoteEnded)
    }
    // Otherwise (offline, out of time) it keeps ringing as "Confab call"
    // until answered, declined or the ring timeout.
  }

  private func reportEnded(_ uuid: UUID, reason: CXCallEndedReason) {
    guard calls.removeValue(forKey: uuid) != nil else { return }
    provider?.reportCall(with: uuid, endedAt: Date(), reason: reason)
  }

  private static func callUpdate(handle: String, name: String, video: Bool) -> CXCallUpdate {
    let update = CXCallUpdate()
    update.remoteHandle = CXHandle(type: .generic, value: handle)
    update.localizedCallerName = name
    update.hasVideo = video
    update.supportsHolding = false
    update.supportsGrouping = false
    update.supportsUngrouping = false
    update.supportsDTMF = false
    return update
  }

  // MARK: From the app's call engine (ConfabPushPlugin commands)

  /// A call rings for the app's running client (it came over the socket,
  /// not as a push): ring through CallKit too, so it rings like a phone call
  /// in the background and on the lock screen. A call CallKit already has
  /// (its push came as well) is only renamed.
  func incoming(_ uuid: UUID, conversation: String, peerName: String, video: Bool) {
    guard let provider = provider else { return }
    if calls[uuid] != nil {
      return update(uuid, peerName: peerName, video: video)
    }
    calls[uuid] = Call()
    let update = Self.callUpdate(handle: conversation, name: peerName, video: video)
    provider.reportNewIncomingCall(with: uuid, update: update) { error in
      DispatchQueue.main.async {
        if error != nil, (error as? CXErrorCodeIncomingCallError)?.code != .callUUIDAlreadyExists {
          // Refused (Do Not Disturb, blocked): the app's own screen still rings.
          self.calls[uuid] = nil
        }
      }
    }
  }

  /// The engine knows who calls (the app's own client took the push).
  func update(_ uuid: UUID, peerName: String?, video: Bool?) {
    guard calls[uuid] != nil else { return }
    let update = CXCallUpdate()
    if let peerName = peerName {
      update.localizedCallerName = peerName
    }
    if let video = video {
      update.hasVideo = video
    }
    provider?.reportCall(with: uuid, updated: update)
  }

  /// The user answered in the app's own UI: tell CallKit (which then takes
  /// the audio session as for an answer from its UI).
  func answer(_ uuid: UUID) {
    guard calls[uuid] != nil else { return }
    calls[uuid]?.local = true
    controller.request(CXTransaction(action: CXAnswerCallAction(call: uuid))) { error in
      if let error = error {
        NSLog("Confab: CallKit answer failed: %@", error.localizedDescription)
      }
    }
  }

  /// The call ended in the app: `local` (hung up or declined in the app's
  /// UI), `remote` (the peer hung up), `unanswered`, `answered_elsewhere`,
  /// `declined_elsewhere`, `failed`.
  func end(_ uuid: UUID, reason: String) {
    guard calls[uuid] != nil else { return }
    let ended: CXCallEndedReason
    switch reason {
    case "local":
      calls[uuid]?.local = true
      controller.request(CXTransaction(action: CXEndCallAction(call: uuid))) { error in
        if let error = error {
          NSLog("Confab: CallKit end failed: %@", error.localizedDescription)
        }
      }
      return
    case "unanswered": ended = .unanswered
    case "answered_elsewhere": ended = .answeredElsewhere
    case "declined_elsewhere": ended = .declinedElsewhere
    case "failed": ended = .failed
    default: ended = .remoteEnded
    }
    reportEnded(uuid, reason: ended)
  }

  // MARK: CallKit

  func providerDidReset(_ provider: CXProvider) {
    // CallKit dropped every call (e.g. its daemon restarted).
    for (uuid, call) in calls where !call.local {
      ConfabPush.shared.post(call: uuid, action: call.answered ? "hangup" : "decline")
    }
    calls.removeAll()
  }

  func provider(_ provider: CXProvider, perform action: CXAnswerCallAction) {
    var call = calls[action.callUUID] ?? Call()
    call.answered = true
    calls[action.callUUID] = call
    if !call.local {
      ConfabPush.shared.post(call: action.callUUID, action: "accept")
    }
    calls[action.callUUID]?.local = false
    action.fulfill()
  }

  func provider(_ provider: CXProvider, perform action: CXEndCallAction) {
    let call = calls.removeValue(forKey: action.callUUID)
    if call?.local != true {
      ConfabPush.shared.post(call: action.callUUID, action: call?.answered == true ? "hangup" : "decline")
    }
    action.fulfill()
  }

  func provider(_ provider: CXProvider, perform action: CXSetMutedCallAction) {
    ConfabPush.shared.post(call: action.callUUID, action: action.isMuted ? "mute" : "unmute")
    action.fulfill()
  }

  // WebKit runs the call's audio (WebRTC in the webview); CallKit's audio
  // session only has to be active, which CallKit does after an answer.
  func provider(_ provider: CXProvider, didActivate audioSession: AVAudioSession) {}

  func provider(_ provider: CXProvider, didDeactivate audioSession: AVAudioSession) {}
}
