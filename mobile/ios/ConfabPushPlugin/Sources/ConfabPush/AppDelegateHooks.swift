// Tauri's runtime (tao) owns the UIApplicationDelegate and offers no hook
// for the remote-notification callbacks, so — as Tauri iOS push plugins do —
// the plugin adds them to the delegate's class at runtime, calling any
// implementation the class already had after its own.

import ObjectiveC
import UIKit

enum AppDelegateHooks {
  private static var installed = false
  /// Held while the delegate is set again below (UIApplication does not
  /// retain its delegate).
  private static var delegate: UIApplicationDelegate?

  /// After launch, on the main thread (ConfabPush.start).
  static func install() {
    guard !installed, let delegate = UIApplication.shared.delegate,
      let cls = object_getClass(delegate)
    else { return }
    installed = true

    do {
      let sel = #selector(
        UIApplicationDelegate.application(_:didRegisterForRemoteNotificationsWithDeviceToken:))
      typealias Previous = @convention(c) (AnyObject, Selector, UIApplication, NSData) -> Void
      let previous = implementation(cls, sel).map { unsafeBitCast($0, to: Previous.self) }
      let hook: @convention(block) (AnyObject, UIApplication, NSData) -> Void = { me, app, token in
        ConfabPush.shared.didRegister(apnsToken: token as Data)
        previous?(me, sel, app, token)
      }
      put(cls, sel, imp_implementationWithBlock(hook), "v@:@@")
    }

    do {
      let sel = #selector(
        UIApplicationDelegate.application(_:didFailToRegisterForRemoteNotificationsWithError:))
      typealias Previous = @convention(c) (AnyObject, Selector, UIApplication, NSError) -> Void
      let previous = implementation(cls, sel).map { unsafeBitCast($0, to: Previous.self) }
      let hook: @convention(block) (AnyObject, UIApplication, NSError) -> Void = { me, app, error in
        ConfabPush.shared.didFailToRegister(error)
        previous?(me, sel, app, error)
      }
      put(cls, sel, imp_implementationWithBlock(hook), "v@:@@")
    }

    do {
      // Background (content-available) wake-ups while the process lives.
      let sel = #selector(
        UIApplicationDelegate.application(_:didReceiveRemoteNotification:fetchCompletionHandler:))
      typealias Done = @convention(block) (UIBackgroundFetchResult) -> Void
      typealias Previous = @convention(c) (
        AnyObject, Selector, UIApplication, NSDictionary, @escaping Done
      ) -> Void
      let previous = implementation(cls, sel).map { unsafeBitCast($0, to: Previous.self) }
      let hook: @convention(block) (AnyObject, UIApplication, NSDictionary, @escaping Done) -> Void = {
        me, app, info, done in
        if let previous = previous {
          // The class handles these itself and completes them.
          previous(me, sel, app, info, done)
        } else {
          ConfabPush.shared.didReceiveBackgroundPush(
            (info as? [AnyHashable: Any]) ?? [:], completion: { done($0) })
        }
      }
      put(cls, sel, imp_implementationWithBlock(hook), "v@:@@@?")
    }

    // UIKit caches what the delegate responds to when it is set; setting it
    // again makes it see the added methods (as Firebase's app delegate
    // swizzler does).
    Self.delegate = delegate
    let app = UIApplication.shared
    app.delegate = nil
    app.delegate = delegate
  }

  /// The class's own or inherited implementation of `sel`, if any.
  private static func implementation(_ cls: AnyClass, _ sel: Selector) -> IMP? {
    class_getInstanceMethod(cls, sel).map(method_getImplementation)
  }

  /// Adds `imp` as the class's implementation of `sel`, replacing the
  /// class's own if it has one.
  private static func put(_ cls: AnyClass, _ sel: Selector, _ imp: IMP, _ types: String) {
    if !class_addMethod(cls, sel, imp, types), let method = class_getInstanceMethod(cls, sel) {
      method_setImplementation(method, imp)
    }
  }
}
