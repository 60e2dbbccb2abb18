"""The event stream: each recipient outcome as one versioned event
(:mod:`~bulksend.events.schema`), as JSON lines on stdout or batched, signed HTTPS webhooks
(:mod:`~bulksend.events.stream`), buffered on disk while a receiver is down
(:mod:`~bulksend.events.spool`)."""
