// The Rust core's push catch-up as Swift sees it. Compiled twice: into the
// plugin (linked into the app, for PushKit calls) and, listed in
// project.yml, into the Notification Service Extension, so both call it and
// read its answer the same way. Extension-safe APIs only.

import Foundation

#if canImport(ConfabFFI)
  // The plugin package's C module; the extension gets the same declarations
  // from its bridging header.
  import ConfabFFI
#endif

enum ConfabShared {
  /// The App Group of the app and its extension (both .entitlements).
  static let appGroup = "group.app.confab"

  /// The profile both processes use: `<App Group container>/profile`. The
  /// app's Rust side must keep its profile here too on iOS (see
  /// mobile/README.md), or the extension catches up on a profile nobody
  /// logged in to.
  static func profileDir() -> URL? {
    FileManager.default
      .containerURL(forSecurityApplicationGroupIdentifier: appGroup)?
      .appendingPathComponent("profile", isDirectory: true)
  }
}

/// What `confab_catch_up` answers: the core's `CaughtUp`, `error`, or
/// `handled_by_app` (the app runs in this process with its own client,
/// which took the wake-up: crates/mobile `set_app_handler`).
struct CaughtUp: Decodable {
  struct Notice: Decodable {
    let conversation: String
    let title: String
    let body: String
    let sound: Bool
  }

  /// The core's `CallView` of a call ringing for this device (`phase` is
  /// always ringing here and not read).
  struct Ringing: Decodable {
    let call: String
    let conversation: String
    let peer: String
    let peerName: String
    let video: Bool

    enum CodingKeys: String, CodingKey {
      case call, conversation, peer, video
      case peerName = "peer_name"
    }
  }

  struct Failure: Decodable {
    let kind: String
    let message: String
  }

  var synced: Bool?
  var unsent: Int?
  var notices: [Notice]?
  var ringing: Ringing?
  var error: Failure?
  var handledByApp: Bool?

  enum CodingKeys: String, CodingKey {
    case synced, unsent, notices, ringing, error
    case handledByApp = "handled_by_app"
  }

  static func failure(_ kind: String, _ message: String) -> CaughtUp {
    CaughtUp(error: Failure(kind: kind, message: message))
  }
}

enum CatchUp {
  /// Runs the core's catch-up for `wake` (the push payload's `confab`
  /// value) on the shared profile. Blocks for up to `budgetMs`: never on
  /// the main thread.
  static func run(wake: Any?, budgetMs: UInt64) -> CaughtUp {
    guard let profile = ConfabShared.profileDir() else {
      return .failure("no_app_group", "the App Group \(ConfabShared.appGroup) is not in the entitlements")
    }
    let json = wakeJSON(wake)
    let reply: UnsafeMutablePointer<CChar>? = profile.path.withCString { dir in
      json.withCString { wake in confab_catch_up(dir, wake, budgetMs) }
    }
    guard let reply = reply else {
      return .failure("no_reply", "confab_catch_up returned nothing")
    }
    defer { confab_string_free(reply) }
    let data = Data(bytes: reply, count: strlen(reply))
    do {
      return try JSONDecoder().decode(CaughtUp.self, from: data)
    } catch {
      return .failure("bad_reply", String(decoding: data, as: UTF8.self))
    }
  }

  /// The wake-up as JSON text. APNs hands it over as a dictionary; a push
  /// without one still means "catch up" to the core, so it gets `null`.
  static func wakeJSON(_ wake: Any?) -> String {
    if let text = wake as? String {
      return text
    }
    if let wake = wake, JSONSerialization.isValidJSONObject(wake),
      let data = try? JSONSerialization.data(withJSONObject: wake)
    {
      return String(decoding: data, as: UTF8.self)
    }
    return "null"
  }
}
