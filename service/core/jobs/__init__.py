"""Asynchronous jobs: upscales that outlive a connection.

- `store`: the durable records (SQLite) and files (inputs, results) under UPSCALER_JOBS_DIR,
  written so that a crash at any point leaves no half-written result, and recovered at start.
- `progress`: tiles done / total of a running job, and its live preview.
- `webhooks`: Standard Webhooks signatures and the delivery schedule.
- `service`: `JobService`, the one owner of the store, the dispatcher and its runners, expiry,
  the change notifications behind the events stream, and the webhook deliveries.
"""
