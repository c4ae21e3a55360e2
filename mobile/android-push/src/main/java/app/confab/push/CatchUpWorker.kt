package app.confab.push

import android.content.Context
import androidx.work.CoroutineWorker
import androidx.work.ExistingWorkPolicy
import androidx.work.ForegroundInfo
import androidx.work.OneTimeWorkRequestBuilder
import androidx.work.OutOfQuotaPolicy
import androidx.work.WorkManager
import androidx.work.WorkerParameters
import androidx.work.workDataOf
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext

/**
 * One push's catch-up. A push handler gets only seconds (FCM's docs: post a
 * notification, schedule anything longer with WorkManager; the UnifiedPush
 * connector binds its service for 5 s), so both hand the wake-up to this
 * expedited job, which may take [BUDGET_MS] and then posts what came in.
 */
class CatchUpWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {
    override suspend fun doWork(): Result {
        val wake = inputData.getString(KEY_WAKE).orEmpty()
        val reply = withContext(Dispatchers.IO) {
            ConfabNative.catchUp(ConfabPush.profileDir(applicationContext), wake, BUDGET_MS)
        }
        Notices.showCatchUp(applicationContext, reply)
        // A catch-up that did not finish is finished by the next wake-up or
        // the next start, not by a retry here.
        return Result.success()
    }

    /** Before Android 12 expedited work runs as a foreground service, which needs a notification. */
    override suspend fun getForegroundInfo(): ForegroundInfo =
        ForegroundInfo(Notices.ID_CATCHING_UP, Notices.catchingUp(applicationContext))

    companion object {
        /** FCM gives a high-priority message about 20 s; leave room to post. */
        const val BUDGET_MS = 18_000L
        private const val KEY_WAKE = "wake"
        private const val UNIQUE_NAME = "confab-catch-up"

        /**
         * Queues a catch-up for [wake] (the wake-up's JSON, "" if none). One
         * runs at a time on the profile; a push during a catch-up queues
         * another behind it, which is quick when nothing more came in.
         */
        fun enqueue(context: Context, wake: String) {
            val request = OneTimeWorkRequestBuilder<CatchUpWorker>()
                .setInputData(workDataOf(KEY_WAKE to wake))
                .setExpedited(OutOfQuotaPolicy.RUN_AS_NON_EXPEDITED_WORK_REQUEST)
                .build()
            WorkManager.getInstance(context)
                .enqueueUniqueWork(UNIQUE_NAME, ExistingWorkPolicy.APPEND_OR_REPLACE, request)
        }
    }
}
