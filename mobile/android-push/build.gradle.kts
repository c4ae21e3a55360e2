// Confab's push and call plugin for Android: an Android library that the
// Tauri build includes in the app's Gradle project (tauri-build writes it
// into gen/android/tauri.settings.gradle from the plugin crate
// crates/push-plugin, whose build script points here). Laid out like the
// libraries of Tauri's own plugins.
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "app.confab.push"
    compileSdk = 37

    defaultConfig {
        minSdk = 24
        // R8 keeps what the Rust side reaches through JNI and reflection.
        consumerProguardFiles("consumer-rules.pro")
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_1_8
        targetCompatibility = JavaVersion.VERSION_1_8
    }
}

kotlin {
    compilerOptions {
        jvmTarget = JvmTarget.JVM_1_8
    }
}

dependencies {
    // FCM is always linked; it only starts when the app's
    // google-services.json configured it (mobile/README.md).
    implementation(platform("com.google.firebase:firebase-bom:34.7.0"))
    implementation("com.google.firebase:firebase-messaging")
    implementation("org.unifiedpush.android:connector:3.3.5")
    implementation("androidx.core:core-ktx:1.17.0")
    implementation("androidx.work:work-runtime-ktx:2.11.1")
    implementation("androidx.appcompat:appcompat:1.7.1")
    implementation(project(":tauri-android"))
}
