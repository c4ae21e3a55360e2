// swift-tools-version:5.5
// The iOS half of Confab's push plugin, laid out like `tauri plugin ios
// init` of @tauri-apps/cli 2.12.6 makes it (templates/plugin/ios-spm).
// tauri-plugin's build script builds it with swift-rs and links the library
// named after the plugin crate's Cargo package, so the product name below
// must equal that name (`tauri-plugin-confab-push`). `../.tauri/tauri-api`
// is the Tauri Swift package the same build script copies next to this
// folder.

import PackageDescription

let package = Package(
  name: "tauri-plugin-confab-push",
  platforms: [
    .macOS(.v10_13),
    .iOS(.v15),
  ],
  products: [
    .library(
      name: "tauri-plugin-confab-push",
      type: .static,
      targets: ["tauri-plugin-confab-push"])
  ],
  dependencies: [
    .package(name: "Tauri", path: "../.tauri/tauri-api")
  ],
  targets: [
    // The Rust core's C entry points (confab_catch_up), for the PushKit
    // handler; they resolve against libapp.a when the app links.
    .target(
      name: "ConfabFFI",
      path: "Sources/ConfabFFI"),
    .target(
      name: "tauri-plugin-confab-push",
      dependencies: [
        .byName(name: "Tauri"),
        "ConfabFFI",
      ],
      path: "Sources/ConfabPush"),
  ]
)
